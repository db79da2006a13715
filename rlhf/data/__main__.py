"""`python -m rlhf.data [data=... | data.path=...] [method=...]`: what a run would train on, before it runs.

The detected format and the keys that told it, row counts (train / held-out / dropped, with the reasons),
token lengths under the model's tokenizer, and the first two rows rendered as the trainer sees them, the
loss-bearing part between ⟦ and ⟧. The tokenizer loads; the model's weights do not.
"""

from __future__ import annotations

from rlhf import cli, config, data, methods
from rlhf.data import formats, lengths
from rlhf.validate import validate

OPEN, CLOSE = "⟦", "⟧"


def preview(argv: list[str]) -> None:
    cfg = config.compose(argv)
    validate(cfg)
    d, name = cfg.data, cfg.method.name
    method = methods.get(name)
    hw = config.resolve_hardware(cfg.hardware, argv)
    tokenizer = data.tokenizer_for(cfg.model, cfg.cache_dir)
    fit = {"tokenizer": tokenizer, "max_length": hw.max_seq_length}
    train = data.load(d, method.DATA_FORMATS, name, **fit)
    train, heldout = data.load_heldout(d, train, method.DATA_FORMATS, name, cfg.seed, **fit)

    how = (
        f"detected from the keys {', '.join(train.detected_by)}"
        if train.detected_by
        else "set by data.format"
    )
    if train.format in formats.HOUSE:
        kind = "converted to conversational rows"
    elif d.as_chat:
        kind = "strings as chat turns (data.as_chat=true)"
    else:
        kind = f"{train.style} rows as TRL takes them"
    print(f"data: {train.source}  (data={d.name}, method={name}, model={cfg.model.name})")
    print(f"format: {train.format}, {how}; {kind}")
    dropped = sum(train.dropped.values()) + (sum(heldout.dropped.values()) if heldout else 0)
    print(
        f"rows: train {len(train.rows)} (from {train.records} records), held-out "
        f"{len(heldout.rows) if heldout else 0}, dropped {dropped}"
    )
    for part, loaded in (("train", train), ("held-out", heldout)):
        if loaded and (loaded.dropped or loaded.truncated):
            print(f"  {part}: {data.describe_lengths(loaded, hw.max_seq_length, d.too_long)}")
    p = lengths.percentiles(train.lengths)
    print(
        f"tokens per row (model={cfg.model.name}'s tokenizer, hardware.max_seq_length={hw.max_seq_length}): "
        + ", ".join(f"{k} {v}" for k, v in p.items())
    )
    for i, row in enumerate(train.rows[:2], start=1):
        for part, pieces in lengths.render(row, tokenizer):
            print(f"\n--- row {i}, {part}, as the trainer sees it (the loss covers {OPEN}...{CLOSE}) ---")
            print("".join(f"{OPEN}{text}{CLOSE}" if loss else text for text, loss in pieces))


if __name__ == "__main__":
    cli.run(preview)
