"""Plain-torch science of influmix: BPE tokenizer, GPTNeoX proxy LM, its trainer and the one-step probe oracles."""
