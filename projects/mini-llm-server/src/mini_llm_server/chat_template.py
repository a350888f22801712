"""How chat messages become a prompt: the checkpoint's own chat template where it has one (the Jinja
`chat_template` of its tokenizer_config.json, as Hugging Face writes it), else a plain role-prefixed
format for the shared model, which was never trained on chat.

Templates come from model files, so they render in Jinja's sandbox: a template can format strings, not
reach Python objects.
"""

from __future__ import annotations

import json
from pathlib import Path

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


def load_chat_template(directory: Path) -> dict | None:
    """{"template", "bos_token", "eos_token"} from directory/tokenizer_config.json, or None without one."""
    path = Path(directory) / "tokenizer_config.json"
    if not path.exists():
        return None
    config = json.loads(path.read_text())
    template = config.get("chat_template")
    if isinstance(template, list):  # several named templates: the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if not template:
        return None

    def token(key: str) -> str:
        value = config.get(key) or ""
        return value.get("content", "") if isinstance(value, dict) else value

    return {"template": template, "bos_token": token("bos_token"), "eos_token": token("eos_token")}


def _raise(message: str):
    raise TemplateError(message)


def render_chat(messages: list[dict], template: dict | None) -> str:
    """The prompt for `messages` ([{"role", "content"}]), ending where the assistant's reply begins."""
    if template is None:
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    return env.from_string(template["template"]).render(
        messages=messages, add_generation_prompt=True, bos_token=template["bos_token"], eos_token=template["eos_token"]
    )
