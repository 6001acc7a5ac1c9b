"""Smaller and faster models from a trained checkpoint, measured and gated before they reach traffic.

`prune` removes MLP channels (a smaller model, not a mask), `distill` fine-tunes a student on a
teacher's soft targets, `measure` takes a candidate's held-out quality, speed and size on this
machine, and `gate` decides which candidates may be released (`pipeline` ties them together for
`elasticml optimize`).
"""
