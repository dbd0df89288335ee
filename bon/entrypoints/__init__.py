"""Front ends over the library: the `bon` command line (`cli`), the OpenAI-compatible server
(`serve`), the lm-evaluation-harness model (`lmeval`) and reward functions for RL trainers
(`rewards`). Each parses what comes through its door and calls the core; the core never
imports them."""
