"""`coh convert` writes a model card (coh.card) into every folder it writes, and --push-to-hub
uploads that folder (coh.hub), against a local fake of the Hub's HTTP API (tests/fake_hub.py)."""

from __future__ import annotations

from huggingface_hub import ModelCard

from coh.cli import main

from ..fake_hub import fake_hub
from .test_lora import adapter  # noqa: F401  (the fixture)


def test_a_converted_folder_gets_a_card(tmp_path, adapter):  # noqa: F811
    root, _ = adapter
    out = tmp_path / "merged"
    assert main(["convert", "lora-merge", str(root / "adapter"), str(out), "--no-progress"]) == 0
    card = ModelCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert {"chain-of-hindsight", "coh"} <= set(meta["tags"]) and meta["library_name"] == "transformers"
    assert "base_model" not in meta  # a local folder is no Hub id: the Hub would refuse it
    assert f"Converted with `coh convert lora-merge` from `{root / 'adapter'}`" in card.text
    assert "`A good reply:`" in card.text and 'feedback=feedback' in card.text  # its coh.json's phrases


def test_push_to_hub_uploads_the_converted_folder(tmp_path, adapter, capsys):  # noqa: F811
    root, _ = adapter
    out = tmp_path / "merged"
    with fake_hub() as hub:
        assert main(["convert", "lora-merge", str(root / "adapter"), str(out), "--no-progress",
                     "--push-to-hub", "coh-user/merged"]) == 0
    assert list(hub.repos) == ["coh-user/merged"] and hub.repos["coh-user/merged"]["private"] is False
    files = hub.repos["coh-user/merged"]["files"]
    assert set(files) == {p.name for p in out.iterdir()} and "README.md" in files and "model.safetensors" in files
    assert all(content == (out / name).read_bytes() for name, content in files.items())
    assert 'from_pretrained("coh-user/merged")' in files["README.md"].decode()
    assert f"pushed {out} to {hub.url}/coh-user/merged" in capsys.readouterr().out


def test_a_failed_push_keeps_the_folder(tmp_path, adapter, capsys):  # noqa: F811
    root, _ = adapter
    out = tmp_path / "merged"
    with fake_hub(fail_with=503):
        assert main(["convert", "lora-merge", str(root / "adapter"), str(out), "--no-progress",
                     "--push-to-hub", "coh-user/merged"]) == 1
    err = capsys.readouterr().err
    assert f"coh convert: error: pushing {out} to the Hub repository coh-user/merged failed: " in err
    assert "503" in err and "Traceback" not in err and (out / "model.safetensors").is_file()


def test_every_action_names_its_source():
    from coh.convert.command import ACTIONS, SOURCES

    assert set(SOURCES) == set(ACTIONS)
    for action, (cls, *_) in ACTIONS.items():
        assert SOURCES[action] in cls.__dataclass_fields__, action
