"""An Ollama Modelfile whose TEMPLATE and stop tokens reproduce the model's own chat template.

The Jinja chat template is not translated by hand: it is rendered with marker contents, and the text around
the markers gives each role's prefix, the end-of-turn suffix, the generation prompt and a default system prompt
the template inserts when a conversation has none (SmolLM2's "You are a helpful AI assistant named SmolLM…").
Those pieces become a Go template over `.Messages` (Ollama's form) and `SYSTEM`. `reproduces_chat_template`
renders conversations with the pieces exactly as that Go template does and compares the text with the
tokenizer's own rendering, so a template this module cannot express is refused instead of shipped wrong.
Ollama itself cannot run here; its documented Modelfile syntax is what this writes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from faithforge.core.errors import UserError

_MARK = {"system": "FFSYSMARK7", "user": "FFUSERMARK7", "assistant": "FFASSTMARK7", "user2": "FFUSER2MARK7"}


@dataclass(frozen=True)
class TemplatePieces:
    system_prefix: str
    user_prefix: str
    assistant_prefix: str
    """The generation prompt: what comes before the assistant's answer."""
    suffix: str
    """What ends every turn (e.g. `<|im_end|>\\n`)."""
    default_system: str | None
    """The system prompt the template inserts when a conversation has none."""
    bos: str
    """A BOS token text the template starts with."""
    bos_in_template: bool = False
    """Whether TEMPLATE writes `bos` itself (the tokenizer does not add BOS; otherwise llama.cpp adds it, by the
    GGUF's add_bos_token, and TEMPLATE must not repeat it)."""

    def to_dict(self) -> dict:
        return asdict(self)


def _render(tokenizer, messages, generation: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


def _adds_bos(tokenizer) -> bool:
    """The tokenizer puts BOS in front of a text by itself (then llama.cpp does too: add_bos_token in the GGUF),
    so a template's leading BOS text is not part of Ollama's TEMPLATE."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def template_pieces(tokenizer) -> TemplatePieces:
    """Each role's prefix, the turn suffix, the generation prompt and the default system prompt, read from the
    tokenizer's chat template by rendering marker messages."""
    s, u, a, u2 = _MARK["system"], _MARK["user"], _MARK["assistant"], _MARK["user2"]
    full = _render(tokenizer, [{"role": "system", "content": s}, {"role": "user", "content": u},
                               {"role": "assistant", "content": a}, {"role": "user", "content": u2}], False)
    bare = _render(tokenizer, [{"role": "user", "content": u}], False)
    prompt = _render(tokenizer, [{"role": "user", "content": u}], True)
    if not prompt.startswith(bare) or prompt == bare:
        raise UserError("the chat template adds no generation prompt after a user turn; an Ollama TEMPLATE cannot "
                        "be derived from it (export with --format gguf and write the Modelfile yourself)")
    assistant_prefix = prompt[len(bare):]
    try:
        i_s, i_u, i_a, i_u2 = (full.index(m) for m in (s, u, a, u2))
    except ValueError:
        raise UserError("the chat template drops a system, user or assistant message; an Ollama TEMPLATE cannot "
                        "be derived from it") from None
    after_user = full[i_u + len(u):i_a]
    if not after_user.endswith(assistant_prefix):
        raise UserError("the chat template's assistant turn does not start with its own generation prompt; an "
                        "Ollama TEMPLATE cannot be derived from it")
    suffix = after_user[:-len(assistant_prefix)]
    after_system, after_assistant = full[i_s + len(s):i_u], full[i_a + len(a):i_u2]
    if not (after_system.startswith(suffix) and after_assistant.startswith(suffix)):
        raise UserError("the chat template ends system, user and assistant turns differently; an Ollama TEMPLATE "
                        "cannot be derived from it")
    user_prefix = after_system[len(suffix):]
    if after_assistant[len(suffix):] != user_prefix:
        raise UserError("the chat template renders a second user turn differently from the first; an Ollama "
                        "TEMPLATE cannot be derived from it")
    head = full[:i_s]
    bos = tokenizer.bos_token if tokenizer.bos_token and head.startswith(tokenizer.bos_token) else ""
    if bos and head[len(bos):] and bare.startswith(bos + head[len(bos):]):
        bos = ""  # the BOS text belongs to the system turn's own prefix (ChatML's <|im_start|> as BOS)
    system_prefix = head[len(bos):]
    # A default system prompt: what the template puts before the first user turn when there is no system turn.
    before_user = bare[len(bos):bare.index(u) - len(user_prefix)]
    default_system = None
    if before_user:
        if not (before_user.startswith(system_prefix) and before_user.endswith(suffix)):
            raise UserError("the chat template inserts text before a lone user turn that is not a system turn; an "
                            "Ollama TEMPLATE cannot be derived from it")
        default_system = before_user[len(system_prefix):len(before_user) - len(suffix)]
    return TemplatePieces(system_prefix=system_prefix, user_prefix=user_prefix, assistant_prefix=assistant_prefix,
                          suffix=suffix, default_system=default_system, bos=bos,
                          bos_in_template=bool(bos) and not _adds_bos(tokenizer))


def render_as_ollama(pieces: TemplatePieces, messages: list[dict]) -> str:
    """The text the Modelfile's TEMPLATE gives for `messages` (Ollama puts SYSTEM first when none is sent),
    computed the way the Go template below is written."""
    if pieces.default_system is not None and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": pieces.default_system}, *messages]
    text = [pieces.bos if pieces.bos_in_template else ""]
    for i, message in enumerate(messages):
        last = i == len(messages) - 1
        role, content = message["role"], message["content"]
        if role == "system":
            text.append(pieces.system_prefix + content + pieces.suffix)
        elif role == "user":
            text.append(pieces.user_prefix + content + pieces.suffix + (pieces.assistant_prefix if last else ""))
        elif role == "assistant":
            text.append(pieces.assistant_prefix + content + ("" if last else pieces.suffix))
    return "".join(text)


def _go_literal(text: str) -> str:
    if "{{" in text or '"""' in text:
        raise UserError("the chat template's markup contains '{{' or '\"\"\"', which a Modelfile TEMPLATE cannot "
                        "hold literally; write the Modelfile yourself")
    return text


def go_template(pieces: TemplatePieces) -> str:
    """The Go template (Ollama's TEMPLATE) over `.Messages`; no `{{-` trimming, so newlines in the pieces stay."""
    sp, up, ap, sx = (_go_literal(p) for p in (pieces.system_prefix, pieces.user_prefix, pieces.assistant_prefix,
                                               pieces.suffix))
    return (_go_literal(pieces.bos if pieces.bos_in_template else "") +
            "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
            f'{{{{ if eq .Role "system" }}}}{sp}{{{{ .Content }}}}{sx}'
            f'{{{{ else if eq .Role "user" }}}}{up}{{{{ .Content }}}}{sx}{{{{ if $last }}}}{ap}{{{{ end }}}}'
            f'{{{{ else if eq .Role "assistant" }}}}{ap}{{{{ .Content }}}}{{{{ if not $last }}}}{sx}{{{{ end }}}}'
            "{{ end }}{{ end }}")


def stop_tokens(pieces: TemplatePieces, tokenizer) -> list[str]:
    """The end-of-turn marker and the EOS token (when it differs), as Ollama `PARAMETER stop` values."""
    stops = []
    end = pieces.suffix.strip()
    if end:
        stops.append(end)
    if tokenizer.eos_token and tokenizer.eos_token not in stops:
        stops.append(tokenizer.eos_token)
    return stops


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def modelfile_text(gguf_name: str, pieces: TemplatePieces, tokenizer, *, num_ctx: int = 4096,
                   system: str | None = None) -> str:
    """The Modelfile; `system` (the run's system prompt) replaces the chat template's default as SYSTEM."""
    lines = [f"# Written by `faithforge model export`: the chat template of {gguf_name}, as Ollama's TEMPLATE.",
             f"FROM ./{gguf_name}", f'TEMPLATE """{go_template(pieces)}"""']
    system = system if system is not None else pieces.default_system
    if system is not None:
        lines.append(f'SYSTEM """{_go_literal(system)}"""')
    lines += [f"PARAMETER stop {_quote(s)}" for s in stop_tokens(pieces, tokenizer)]
    lines.append(f"PARAMETER num_ctx {num_ctx}")
    return "\n".join(lines) + "\n"


def reproduces_chat_template(pieces: TemplatePieces, tokenizer, conversations: list[list[dict]]) -> list[int]:
    """Indices of `conversations` (ending in a user turn) whose Modelfile rendering differs from the tokenizer's
    own chat template with the generation prompt (BOS aside); [] when every one matches."""
    wrong = []
    for i, messages in enumerate(conversations):
        expected = _render(tokenizer, messages, True)
        if pieces.bos and not pieces.bos_in_template and expected.startswith(pieces.bos):
            expected = expected[len(pieces.bos):]
        if render_as_ollama(pieces, messages) != expected:
            wrong.append(i)
    return wrong
