//! Prompt building: fill-in-the-middle and chat prompts assembled from token ids, within a token budget.
