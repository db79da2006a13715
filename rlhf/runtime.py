"""Process-wide settings applied once at start-up, before any heavy import."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import sys
import warnings
from pathlib import Path

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


def startup() -> None:
    """What every entrypoint does first: memory and BLAS tuning, quiet libraries; a launch's rank ends with
    its launcher."""
    if malloc() == "glibc":
        tune_malloc()
    tune_onednn()
    tune_blas()
    quiet_libraries()
    if inside_launch():
        import signal

        # torch's elastic agent runs each rank in a session of its own: a `kill -9` of the launch's process
        # group (or of the agent) left them training on, unattended, to the run's end
        die_with_parent(signal.SIGKILL)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(signum: int) -> None:
    """Ask Linux to send this process `signum` when its parent exits (prctl PR_SET_PDEATHSIG); elsewhere,
    nothing. A parent already gone by the time it is set sends it at once."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signum), 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it exited between the two calls
        os.kill(os.getpid(), signum)


def is_main_process() -> bool:
    """Rank 0 under `accelerate launch` / torchrun; the only process in a plain run."""
    return int(os.environ.get("RANK", "0")) == 0


# the allocators torch's CPU launcher preloads (torch.backends.xeon.run_cpu), in its order, by library name
ALLOCATORS = {"tcmalloc": ("tcmalloc_minimal", "tcmalloc"), "jemalloc": ("jemalloc",)}
# jemalloc's settings as that launcher gives them: freed pages kept for reuse, as tune_malloc does for glibc
JEMALLOC_CONF = (
    "oversize_threshold:1,background_thread:true,metadata_thp:auto,"
    "dirty_decay_ms:9000000000,muzzy_decay_ms:9000000000"
)
MALLOC_CHOICES = ("auto", *ALLOCATORS, "glibc")
NO_ALLOCATOR = (  # what `make setup` says on a machine without either
    "note: no tcmalloc or jemalloc on this machine, so runs use glibc's malloc: ~200 MB more in training "
    "(README: Our own footprint); Debian/Ubuntu: sudo apt install libtcmalloc-minimal4"
)


def malloc() -> str:
    """The allocator this process runs on: tcmalloc or jemalloc where one is loaded (preloaded), else glibc."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "glibc"
    return next((name for name in ALLOCATORS if f"lib{name}" in maps), "glibc")


def find_allocator(name: str) -> str | None:
    """The shared library of allocator `name` (a key of ALLOCATORS): in this environment's lib/ (conda's
    gperftools or jemalloc), else where the dynamic linker finds it (Debian's libtcmalloc-minimal4 and
    libjemalloc2)."""
    for lib in ALLOCATORS[name]:
        for prefix in dict.fromkeys(filter(None, (os.environ.get("CONDA_PREFIX"), sys.prefix))):
            found = sorted(Path(prefix, "lib").glob(f"lib{lib}.so*"))
            if found:
                return str(found[0])
        found = ctypes.util.find_library(lib)
        if found:
            return found
    return None


def preload_malloc() -> None:
    """Run this command again, at once, with tcmalloc (else jemalloc) preloaded where the machine has one.

    On glibc's malloc, even as tune_malloc sets it, training on the embedded model peaked up to ~260 MB
    higher than on tcmalloc (dpo, rm) and took 1.02-1.33x the time per step (README: Our own footprint).
    They replace malloc only if loaded before anything allocates (LD_PRELOAD), so the process executes
    itself again with LD_PRELOAD set, as torch's CPU launcher runs its children; its id, arguments and
    environment stay the same. RLHF_MALLOC chooses: auto (the default: tcmalloc, then jemalloc, else
    glibc), tcmalloc, jemalloc (exit 2 where it is missing) or glibc. Setting glibc's own thresholds
    (MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_) keeps glibc, as does a process that already runs on
    one of these allocators, or one whose preload the dynamic loader ignored (a library it cannot load: it
    says so on stderr). Only for a command line: call it before the process does any work.
    """
    from rlhf.errors import UserError

    choice = os.environ.get("RLHF_MALLOC", "auto")
    if choice not in MALLOC_CHOICES:
        raise UserError(f"RLHF_MALLOC={choice}: no such allocator; fix: one of {', '.join(MALLOC_CHOICES)}")
    if not sys.platform.startswith("linux") or choice == "glibc" or malloc() != "glibc":
        return
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return
    names = list(ALLOCATORS) if choice == "auto" else [choice]
    found = next(((name, path) for name in names if (path := find_allocator(name))), None)
    if found is None:
        if choice == "auto":
            return
        package = {"tcmalloc": "libtcmalloc-minimal4", "jemalloc": "libjemalloc2"}[choice]
        raise UserError(
            f"RLHF_MALLOC={choice}: no lib{ALLOCATORS[choice][0]}.so on this machine; fix: install it "
            f"(Debian/Ubuntu: apt install {package}) or set RLHF_MALLOC=auto"
        )
    name, path = found
    if path in os.environ.get("LD_PRELOAD", "").split(":"):  # preloaded, and the loader ignored it: go on
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = ":".join(filter(None, (path, env.get("LD_PRELOAD"))))
    if name == "jemalloc":
        env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    sys.stdout.flush()
    sys.stderr.flush()
    with contextlib.suppress(OSError):  # cannot execute itself: go on with glibc
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def tune_malloc() -> None:
    """Keep freed memory in the process instead of handing it back to the OS after every step.

    glibc serves large tensors with mmap and returns freed memory at once, so every training step pays for
    fresh zeroed pages (tens of millions of page faults in a 5-minute CPU run). Raising both thresholds to
    1 GiB keeps that memory for reuse: LoRA SFT on SmolLM2-135M ran 1.4x faster on 2 cores
    (33.8 s -> 24.1 s for 10 steps). Peak memory is unchanged; resident memory stays near the peak.
    glibc's own variables (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_), where set, win: that is how to run
    with other thresholds (bench/footprint.py measures both).
    """
    if not sys.platform.startswith("linux"):
        return
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(2**30))
        libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(2**30))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt): nothing to tune
        return


ONEDNN_CACHE = "96"  # primitives kept by oneDNN (its default: 1024)


def tune_onednn() -> None:
    """A smaller cache of oneDNN's compiled matmul primitives (ONEDNN_PRIMITIVE_CACHE_CAPACITY), unless set.

    On a CPU, torch runs bf16 matmuls through oneDNN, which compiles a primitive per shape and keeps up to
    1024 of them with their buffers; rows of varying length make new shapes every step, so the cache grew
    for the whole run. LoRA SFT on SmolLM2-135M, 40 steps, two alternating pairs on a 2-core Xeon (AMX):
    training peak 2094-2099 MB at 140-143 tokens/s with oneDNN's default, 1769-1788 MB at 135-138 with 96
    (16 halved the speed: the primitives of one step no longer fit). Read when oneDNN first runs, so it is
    set before torch computes anything.
    """
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_CACHE)


def release_memory() -> None:
    """Hand the memory a finished stage freed back to the OS (glibc's malloc_trim).

    With tune_malloc's thresholds, memory freed after the base model's eval (its batches of logits over
    the vocabulary: GBs) stays in the process, and training's peak comes on top of it. Trimming between
    stages keeps the speed of reuse within a stage and returns what the next stage would not reuse.
    """
    import gc

    gc.collect()
    if not sys.platform.startswith("linux"):
        return
    allocator = malloc()
    try:
        if allocator == "tcmalloc":
            ctypes.CDLL(None).MallocExtension_ReleaseFreeMemory()
        elif allocator == "jemalloc":  # purge every arena (MALLCTL_ARENAS_ALL = 4096)
            ctypes.CDLL(None).mallctl(b"arena.4096.purge", None, None, None, ctypes.c_size_t(0))
        else:
            ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # a libc without malloc_trim (musl), or the library not found
        return


class StagePeaks:
    """Peak resident memory of this process per stage of a run (loading, training, evaluation).

    Linux keeps one high-water mark per process (VmHWM, also what getrusage's ru_maxrss reads) and resets it
    when "5" is written to /proc/self/clear_refs; `end(stage)` reads it and resets it for the next stage, so
    training's peak is told apart from the eval stage's. Where that file is missing (not Linux), every stage
    reads the process's peak so far.
    """

    def __init__(self) -> None:
        self.peaks: dict[str, float] = {}
        self.overall = 0.0

    def start(self) -> None:
        """A new run in this process: its peaks count from here (runs in one process do not share them)."""
        self.peaks, self.overall = {}, 0.0
        self.reset()

    @staticmethod
    def reset() -> None:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")

    @staticmethod
    def high_water_mb() -> float:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def end(self, stage: str) -> float:
        """The peak since the previous stage ended (or since start), recorded under `stage`."""
        peak = self.high_water_mb()
        self.peaks[stage] = round(max(peak, self.peaks.get(stage, 0.0)), 1)
        self.overall = max(self.overall, peak)
        self.reset()
        return peak

    def peak_mb(self) -> float:
        """The process's peak over every stage so far, the current one included."""
        return round(max(self.overall, self.high_water_mb()), 1)


PEAKS = StagePeaks()  # one per process: what summary.json reports as peak_rss_mb


def tune_blas(cpuinfo: Path = Path("/proc/cpuinfo")) -> None:
    """On an AMD CPU, MKL runs its AVX2 kernels (MKL_CBWR=AVX2), unless MKL_CBWR is already set.

    MKL gives AMD processors a slower code path than the AVX2 kernels they can run. On a 2-core AMD EPYC
    (AVX2), a LoRA SFT step on SmolLM2-135M took 1.33-1.46 s instead of 1.67 s with it, and a greedy decode
    step 141-151 ms instead of 220-250 ms at batch 4 (388-401 instead of 465-482 at batch 40). Intel CPUs keep
    MKL's own choice (AVX-512 where they have it). MKL reads the variable when it starts: call this before
    the first matmul.
    """
    if "MKL_CBWR" in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        first_cpu = cpuinfo.read_text().split("\n\n", 1)[0]
    except OSError:
        return
    flags = next(
        (line.split(":", 1)[1].split() for line in first_cpu.splitlines() if line.startswith("flags")), []
    )
    if "AuthenticAMD" in first_cpu and "avx2" in flags:
        os.environ["MKL_CBWR"] = "AVX2"


def quiet_libraries() -> None:
    """Silence library chatter that users cannot act on."""
    # bitsandbytes asks for a kernel package fetched from the hub at run time; its built-in kernels work
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # lm-eval narrates every stage at INFO and warns that a model object was passed in (by design here)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    # optuna (hparams_search) imports alembic, which announces each of its plugins at INFO under Hydra's logging
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # accelerate narrates each FSDP checkpoint (4 lines per rank at INFO); the run says where checkpoints went
    logging.getLogger("accelerate.utils.fsdp_utils").setLevel(logging.WARNING)
    # QLoRA under FSDP2: accelerate says it keeps the 4-bit weights out of its shards, each rank whole, as
    # the README's engine table says
    warnings.filterwarnings("ignore", message=r"Found \d+ non-floating frozen Params4bit")
    # ppo under FSDP: the policy-and-value module returns slices of its logits and values (views), which FSDP2
    # warns an in-place op could break; the loop changes neither in place
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPPolicyWithValue\) returned a view")
    # DeepSpeed probes the C compiler at start-up (its async I/O check), which logs each gcc command at INFO
    logging.getLogger("compilers.C.base").setLevel(logging.WARNING)
    # deprecation notices inside transformers / TRL / peft, not in anything users write
    warnings.filterwarnings("ignore", category=FutureWarning)


def leave_out(names: list[str]) -> list[str]:
    """Make these installed libraries unimportable for the rest of the process; return the ones left out.

    transformers, peft, accelerate and TRL import each optional integration they find installed
    (bitsandbytes through peft, DeepSpeed for a type check, wandb for its callback) whether or not the run
    uses it. `sys.modules[name] = None` is Python's own way to say "not here": `import name` raises
    ModuleNotFoundError and `importlib.util.find_spec(name)` returns None, which is what those libraries'
    availability checks ask. Only before transformers is imported, so that every library sees one answer
    for the whole process; a name already imported, or not installed, is left as it is.
    """
    if "transformers" in sys.modules:
        return []
    import importlib.util

    out = []
    for name in names:
        if name not in sys.modules and importlib.util.find_spec(name) is not None:
            sys.modules[name] = None
            out.append(name)
    return out


def inside_launch() -> bool:
    """True in a process that a launcher started as one rank of several (or of one, under torchrun)."""
    return "LOCAL_RANK" in os.environ or "WORLD_SIZE" in os.environ


def launch_engine() -> str:
    """The engine of the launch this process is a rank of, as accelerate tells its children (ACCELERATE_USE_FSDP,
    ACCELERATE_USE_DEEPSPEED): fsdp, deepspeed or ddp; "" outside a launch."""
    if not inside_launch():
        return ""
    for engine in ("fsdp", "deepspeed"):
        if os.environ.get(f"ACCELERATE_USE_{engine.upper()}", "false").lower() == "true":
            return engine
    return "ddp"


def launch_zero_stage() -> int:
    """The ZeRO stage of the DeepSpeed launch this process is in: accelerate's variable, else its JSON."""
    if os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE"):
        return int(os.environ["ACCELERATE_DEEPSPEED_ZERO_STAGE"])
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "")
    if path and Path(path).is_file():
        stage = json.loads(Path(path).read_text()).get("zero_optimization", {}).get("stage")
        if isinstance(stage, int):
            return stage
    return 2  # accelerate's own default
