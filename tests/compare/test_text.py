"""The plain text for the regulariser: real prose from the standard library, split without overlap."""

from coh.compare.text import prose_paragraphs, read_documents, write_plain_text


def test_prose_is_english_paragraphs():
    paragraphs = prose_paragraphs()
    assert len(paragraphs) > 300
    assert all(len(p.split()) >= 20 and "\n" not in p for p in paragraphs)
    assert len(set(paragraphs)) == len(paragraphs)
    words = " ".join(paragraphs).split()
    assert sum(w.lower() in ("the", "of", "and", "is", "a", "to") for w in words) / len(words) > 0.1


def test_train_and_heldout_are_disjoint(tmp_path):
    counts = write_plain_text(tmp_path, 0.2, seed=0)
    train, held = read_documents(tmp_path / "train.txt"), read_documents(tmp_path / "heldout.txt")
    assert counts["train"] == len(train) and counts["heldout"] == len(held)
    assert not set(train) & set(held)
    assert 0.1 < len(held) / (len(train) + len(held)) < 0.3
    assert "PSF" in counts["source"]
