"""A stand-in for the eval harness's agent, run as its own process: the openai SDK configured
only by its environment (OPENAI_API_KEY, and OPENAI_BASE_URL or HTTPS_PROXY), asking until the
API refuses. It prints how many answers it got, then the refusal's status and message on stderr,
and exits 1 (2 if it was never refused)."""

from __future__ import annotations

import sys

import openai

MAX_TOKENS = int(sys.argv[1]) if len(sys.argv) > 1 else 2000

client = openai.OpenAI()
served = 0
while served < 200:
    try:
        client.chat.completions.create(
            model="gpt-5.4",
            messages=[{"role": "user", "content": "Solve the task."}],
            max_completion_tokens=MAX_TOKENS,
        )
    except openai.APIStatusError as e:
        print(served, flush=True)
        print(f"{e.status_code} {e.message}", file=sys.stderr, flush=True)
        sys.exit(1)
    served += 1
print(served, flush=True)
sys.exit(2)
