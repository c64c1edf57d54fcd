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
# rows per model call of a served (or Triton) model: `--max-batch` of compile and serve
DEFAULT_MAX_BATCH = 32
MAX_SERVE_BATCH = 1 << 16
DEFAULT_WORKERS, MAX_WORKERS = 2, 256  # data loader processes (train and evaluate)
DEVICES = ("auto", "cpu", "cuda")  # what --device accepts (train, evaluate, serve)
# Learning-rate schedules (runtimes/train/schedule.py implements them).
SCHEDULES = ("step", "cosine")
MAX_LR = 1e30  # any finite rate: a huge one diverges, and training says so
MAX_IMAGE_PIXELS = 50_000_000  # decoded pixels of one image (source or resize target)
# float32 activations of every node at the batch: the compile budget's and serve's default
MAX_ACTIVATION_BYTES = 64 * 1024**3


def image_pixels_problem(source: tuple[int, int], target: tuple[int, int] | None,
                         max_pixels: int = MAX_IMAGE_PIXELS) -> str | None:
    """Why an image of (width, height) `source`, resized to `target`, must not be decoded
    (checked from its header: a 563-byte PNG can claim 500000x1 pixels, which the evaluation
    resize turns into 18 million x 37); None when it may be."""
    for what, size in (("image", source), ("its resize target", target)):
        if size is None:
            continue
        width, height = size
        if width < 1 or height < 1:
            return f"{what} has no pixels ({width}x{height})"
        if width * height > max_pixels:
            return f"{what} is {width}x{height}, more than {max_pixels} pixels"
    return None

# Sweep files (`resnext-compile sweep`): hard ranges of the schema. The default budget
# (`budget.SweepBudget`, raised in a sweep's `limits:`) is far lower.
MAX_SWEEP_POINTS = 10_000  # configurations in one sweep
MAX_SWEEP_SEEDS = 1_000  # seeds per configuration
MAX_SWEEP_EPOCHS = 10_000_000  # epochs summed over every run of a sweep
MAX_SWEEP_FIELDS = 32  # spec fields one axis may vary
