"""Bifrost provider names and the genai-prices provider ids spendfuse uses for them: `PROVIDERS`
maps each name spendfuse can govern to its id, and `_MEMBERS` lists, for each id, every Bifrost
name that lands on it (and so must be governed identically). Data only."""

from __future__ import annotations

#: Bifrost provider name -> genai-prices provider id (the ids spendfuse scopes and allow-lists
#: use). Bifrost names that share an id (gemini and vertex are both Google; bedrock and
#: bedrock_mantle both AWS Bedrock) must be governed identically, since spendfuse cannot tell them
#: apart. Providers genai-prices does not price (self-hosted vLLM, Ollama, ...) are refused.
PROVIDERS: dict[str, str] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "azure": "azure",
    "bedrock": "aws",
    "bedrock_mantle": "aws",
    "gemini": "google",
    "vertex": "google",
    "cohere": "cohere",
    "mistral": "mistral",
    "groq": "groq",
    "openrouter": "openrouter",
    "perplexity": "perplexity",
    "cerebras": "cerebras",
    "deepseek": "deepseek",
    "fireworks": "fireworks",
    "xai": "x-ai",
    "elevenlabs": "elevenlabs",
}
_MEMBERS: dict[str, tuple[str, ...]] = {
    g: tuple(sorted(b for b, gid in PROVIDERS.items() if gid == g)) for g in set(PROVIDERS.values())
}
