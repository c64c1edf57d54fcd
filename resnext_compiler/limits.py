"""Ranges of every number a spec or a command-line option accepts (one place for both).

Far beyond any real network, small enough that the analytic budget (`budget.py`) computes
with exact, modest integers and no option can ask for an unbounded amount of work.
"""

MAX_EXTENDS = 16  # files in one `extends` chain

MAX_CHANNELS = 1 << 16  # input channels, stage widths, group widths
MAX_IMAGE_SIDE = 1 << 16  # input height / width
MAX_CARDINALITY = 1 << 12
MAX_STAGE_DEPTH = 10_000  # blocks in one stage
MAX_STAGES = 64
MAX_CLASSES = 1 << 20
MAX_EPOCHS = 100_000
MAX_BATCH = 1 << 20  # samples in one global batch
MAX_LR = 1000.0
