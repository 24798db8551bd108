"""Training: the three NExT-GPT stages (design section 2)."""
