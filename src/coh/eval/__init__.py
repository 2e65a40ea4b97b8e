"""``coh eval``: lm-evaluation-harness and the paper's own protocols.

- ``config``: the options of every action (one dataclass each; ``Sampling`` among the groups);
- ``command``: the command line, one function per action;
- ``harness``: lm-eval in this process or against an OpenAI-compatible server;
- ``examples``: evaluation examples from raw dataset files or the hub;
- ``likelihood``: sequence likelihoods through the training loss;
- ``generations``: inference prompts, replies (here or from a server) and generations files;
- ``dialogue``, ``summarization``, ``controllability``, ``pairwise``: the four protocols;
- ``preference``: the one definition of preference accuracy (training's evaluation uses it too);
- ``scorers``: what ranks replies, a reward model or a Python function;
- ``metrics``: accuracies and win rates with their intervals; ``report``: result files and ``compare``.
"""
