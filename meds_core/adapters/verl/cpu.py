"""CPU stand-ins that let veRL 0.9's real training loop run on a machine without a GPU (laptop trials, CI).

veRL 0.9 ships only accelerator pieces for three places of its loop; this module plugs a CPU piece into each through
veRL's own extension points (no veRL file is edited, no veRL code is copied):

* **Platform** (:class:`PlatformCPU`, ``PlatformRegistry.register("cpu")``, selected with ``VERL_PLATFORM=cpu``):
  stands in for the CUDA platform. Device ``cpu``, collectives over gloo, and Ray's logical ``GPU`` resource as the
  scheduling slot of one training worker (Ray is started with as many logical GPUs as there are workers).
* **Training engine** (``EngineRegistry.register(..., device="cpu")``): veRL's own ``FSDPEngineWithLMHead`` (FSDP2)
  registered for the ``cpu`` device; FSDP2 shards over gloo on CPU, FSDP1 does not run on CPU.
* **Rollout** (:class:`HFReplica`, ``RolloutReplicaRegistry.register("hf_cpu")``, and :class:`HFServerAdapter` in
  veRL's rollout table): stands in for a vLLM server. One Ray actor per replica (:class:`HFServer`) serves veRL's
  token-in/token-out ``generate`` with transformers ``generate``; after every policy update veRL's ``naive``
  checkpoint engine hands the actor's full weights to the adapter, which loads them into the server's model.

One call of veRL refuses a CPU platform outright: ``initialize_global_process_group_ray`` (every training worker)
asks torch for the backend ``f"cpu:gloo,{device}:{backend}"``, which for device ``cpu`` reads ``cpu:gloo,cpu:gloo``,
and torch's ``init_process_group`` raises ``ValueError: Duplicate device type cpu in backend string``. So, with the
CPU platform selected, :func:`register` wraps ``torch.distributed.init_process_group`` to drop a repeated
``device:backend`` pair that names the same backend (``cpu:gloo,cpu:gloo`` -> ``cpu:gloo``); any other backend string,
a conflicting one included, reaches torch unchanged.

Sampling is seeded per request when ``actor_rollout_ref.rollout.full_determinism=True``: seed = hash(rollout seed,
global step, k, prompt ids), where k counts the earlier requests for the same prompt in the same step.

Import this module in every veRL process with ``VERL_USE_EXTERNAL_MODULES=meds_core.adapters.verl.cpu`` (veRL
imports it at ``import verl``) and set ``VERL_PLATFORM=cpu``; ``run_meds_cpu.sh`` does both. Not for speed: a toy
model trains a step in seconds, a real one would take hours.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from typing import Any

import torch

from ._compat import require_verl

require_verl()

import ray  # noqa: E402
from verl.plugin.platform import PlatformBase, PlatformRegistry  # noqa: E402
from verl.workers.rollout import base as rollout_base  # noqa: E402
from verl.workers.rollout.base import BaseRollout  # noqa: E402
from verl.workers.rollout.replica import RolloutReplica, RolloutReplicaRegistry, TokenOutput  # noqa: E402

__all__ = ["ROLLOUT_NAME", "HFReplica", "HFServer", "HFServerAdapter", "PlatformCPU", "dedup_backend", "register"]

logger = logging.getLogger(__name__)
ROLLOUT_NAME = "hf_cpu"


# ------------------------------------------------------------------------------------------------ platform
def _memory_bytes() -> tuple[int, int]:
    """(available, total) bytes of host memory, from /proc/meminfo where present."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    free = total
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        free = int(info["MemAvailable"].split()[0]) * 1024
    return free, total


class _CPUDevice:
    """``torch.cpu`` plus the accelerator calls veRL makes on its device module (memory statistics, RNG state,
    cache control), answered for the host: no cache to empty, no device-side allocator statistics (0)."""

    def __getattr__(self, name: str):
        return getattr(torch.cpu, name)

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def device_count() -> int:
        return 1

    @staticmethod
    def current_device() -> str:
        return "cpu"

    @staticmethod
    def set_device(device) -> None:
        return None

    @staticmethod
    def get_device_name(device=None) -> str:
        return "cpu"

    @staticmethod
    def get_device_properties(device=None):
        from types import SimpleNamespace

        return SimpleNamespace(name="cpu", total_memory=_memory_bytes()[1])

    @staticmethod
    def mem_get_info(device=None) -> tuple[int, int]:
        return _memory_bytes()

    @staticmethod
    def memory_allocated(device=None) -> int:
        return 0

    memory_reserved = max_memory_allocated = max_memory_reserved = memory_allocated

    @staticmethod
    def reset_peak_memory_stats(device=None) -> None:
        return None

    @staticmethod
    def empty_cache() -> None:
        return None

    ipc_collect = empty_cache

    @staticmethod
    def synchronize(device=None) -> None:
        return None

    @staticmethod
    def get_rng_state(device=None) -> torch.Tensor:
        return torch.get_rng_state()

    @staticmethod
    def set_rng_state(state: torch.Tensor, device=None) -> None:
        torch.set_rng_state(state)

    @staticmethod
    def manual_seed(seed: int) -> None:
        torch.manual_seed(seed)

    manual_seed_all = manual_seed


class PlatformCPU(PlatformBase):
    """veRL platform for CPU-only machines: torch CPU device, gloo collectives, Ray ``GPU`` slots as worker slots."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self):
        return _CPUDevice()

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check=False) -> bool:
        return False  # never auto-detected: only VERL_PLATFORM=cpu selects it

    def current_device(self) -> str:
        return "cpu"  # veRL passes it to ``.to(...)`` / ``torch.device(...)``; an int would mean an accelerator

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index) -> None:
        return None

    def synchronize(self, device_index=None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0):
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"  # what Ray sets for its logical GPUs; no CPU kernel reads it

    @contextlib.contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self):
        return None


# ------------------------------------------------------------------------------------------------ rollout
def _sample_seed(base: int, step: int, k: int, prompt_ids: list[int]) -> int:
    """Seed of the k-th sample of ``prompt_ids`` in step ``step``: the first 8 bytes of a SHA-256."""
    digest = hashlib.sha256(f"{base}|{step}|{k}|{','.join(map(str, prompt_ids))}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class HFServer:
    """Rollout server of one replica (a Ray actor): the policy as a transformers model, token-in/token-out.

    Parameters
    ----------
    model_path : str
        Folder of the initial policy (``actor_rollout_ref.model.path``).
    response_length : int
        Longest response in tokens (``rollout.response_length``).
    seed : int
        Base of the per-request seeds (``rollout.seed``).
    deterministic : bool
        Seed each request from (seed, global step, request id, prompt ids); else the default torch generator.
    """

    def __init__(self, model_path: str, response_length: int, seed: int, deterministic: bool):
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(1)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, torch_dtype=torch.float32).eval()
        self.response_length = int(response_length)
        self.seed = int(seed)
        self.deterministic = bool(deterministic)
        self.global_steps = 0
        self._lock = asyncio.Lock()
        self._seen: dict[tuple, int] = {}  # (step, prompt) -> requests served so far: the k-th gets seed k

    def load_weights(self, state: dict[str, torch.Tensor], global_steps: int | None) -> int:
        """Load the actor's full weights (HF names, any float dtype); returns the number of tensors loaded."""
        own = self.model.state_dict()
        unknown = sorted(set(state) - set(own))
        if unknown:
            raise KeyError(f"weights {unknown[:3]} are not parameters of the rollout model")
        with torch.no_grad():
            for name, value in state.items():
                own[name].copy_(value.to(own[name].dtype))
        if global_steps is not None:
            self._set_step(global_steps)
        return len(state)

    def _set_step(self, global_steps: int) -> None:
        if int(global_steps) != self.global_steps:
            self._seen.clear()
        self.global_steps = int(global_steps)

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any],
                       **_ignored: Any) -> TokenOutput:
        """veRL's ``generate``: sample one response to ``prompt_ids`` ([P] ints) with temperature / top-p / top-k."""
        async with self._lock:  # one request at a time: the model is shared and CPU-bound
            return self._generate(request_id, list(prompt_ids), sampling_params)

    @torch.no_grad()
    def _generate(self, request_id: str, prompt_ids: list[int], params: dict[str, Any]) -> TokenOutput:
        temperature = float(params.get("temperature", 1.0))
        top_p = float(params.get("top_p", 1.0))
        top_k = int(params.get("top_k", -1) or -1)
        max_new = min(int(params.get("max_tokens", self.response_length) or self.response_length),
                      self.response_length)
        gen = None
        if self.deterministic:
            # the k-th request for this prompt in this step gets seed k. Not veRL's request id: under dynamic
            # sampling the ids ("det-<priority>") depend on how refills were batched, which depends on timing, and
            # they repeat within a group. The samples of one prompt are exchangeable, so the set of responses a
            # group gets does not depend on the order its requests arrive in.
            key = (self.global_steps, tuple(prompt_ids))
            k = self._seen.get(key, 0)
            self._seen[key] = k + 1
            gen = torch.Generator().manual_seed(_sample_seed(self.seed, self.global_steps, k, prompt_ids))
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        ids = torch.tensor([prompt_ids])
        out: list[int] = []
        logps: list[float] = []
        past = None
        step_input = ids
        for _ in range(max_new):
            o = self.model(input_ids=step_input, past_key_values=past, use_cache=True)
            past = o.past_key_values
            logits = o.logits[0, -1].float()
            logp_full = torch.log_softmax(logits, -1)
            if temperature <= 0:
                tok = int(torch.argmax(logits))
            else:
                probs = torch.softmax(logits / temperature, -1)
                if top_k > 0:
                    kth = torch.topk(probs, min(top_k, probs.numel())).values[-1]
                    probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
                if top_p < 1.0:
                    sorted_p, order = torch.sort(probs, descending=True)
                    keep = torch.cumsum(sorted_p, 0) - sorted_p < top_p
                    mask = torch.zeros_like(probs, dtype=torch.bool)
                    mask[order[keep]] = True
                    probs = torch.where(mask, probs, torch.zeros_like(probs))
                tok = int(torch.multinomial(probs / probs.sum(), 1, generator=gen))
            out.append(tok)
            logps.append(float(logp_full[tok]))
            if tok in eos_ids:
                break
            step_input = torch.tensor([[tok]])
        stop = "completed" if out and out[-1] in eos_ids else None
        return TokenOutput(token_ids=out, log_probs=logps if params.get("logprobs") else None, stop_reason=stop,
                           num_preempted=0, extra_fields={"global_steps": self.global_steps})

    # veRL's replica control surface: nothing to free or resume on CPU
    async def set_global_steps(self, global_steps: int):
        self._set_step(global_steps)

    async def wake_up(self, tags: list[str] | None = None):
        return None

    async def sleep(self):
        return None

    async def clear_kv_cache(self):
        return None

    async def release_kv_cache(self):
        return None

    async def resume_kv_cache(self):
        return None

    async def abort_all_requests(self, reset_prefix_cache: bool = True, reject_request: bool = False):
        return {}

    async def resume_generation(self):
        return None

    async def wait_for_requests_to_drain(self):
        return None

    async def start_profile(self, **kwargs):
        return None

    async def stop_profile(self):
        return None


def _model_folder(model_config) -> str:
    """The policy folder of ``actor_rollout_ref.model`` (an ``HFModelConfig`` or the DictConfig it comes from)."""
    local = model_config.get("local_path", None) if hasattr(model_config, "get") else None
    return local or getattr(model_config, "local_path", None) or model_config.path


def _server_name(replica_rank: int) -> str:
    return f"meds_hf_cpu_server_{replica_rank}"


class HFReplica(RolloutReplica):
    """veRL rollout replica whose server is an :class:`HFServer` actor (hybrid mode: one training worker each)."""

    async def launch_servers(self):
        if self.world_size != 1:
            raise ValueError(f"rollout '{ROLLOUT_NAME}' serves one worker per replica; set "
                             "actor_rollout_ref.rollout.tensor_model_parallel_size=1 (and data/pipeline parallel 1).")
        server_cls = ray.remote(num_cpus=0)(HFServer)
        server = server_cls.options(name=_server_name(self.replica_rank), max_concurrency=self.max_concurrency).remote(
            model_path=_model_folder(self.model_config), response_length=self.config.response_length,
            seed=self.config.seed, deterministic=bool(getattr(self.config, "full_determinism", False)))
        self.servers = [server]
        self._server_handle = server
        self._server_address = f"{ROLLOUT_NAME}-{self.replica_rank}"


class HFServerAdapter(BaseRollout):
    """The rollout held by each training worker: forwards veRL's weight sync to the worker's :class:`HFServer`."""

    async def resume(self, tags: list[str]):
        return None

    async def release(self):
        return None

    async def update_weights(self, weights, wire_format: str = "named_tensors", global_steps: int | None = None,
                             **kwargs):
        if wire_format != "named_tensors":
            raise ValueError(f"rollout '{ROLLOUT_NAME}' takes full named tensors; got wire_format={wire_format!r}. "
                             "Use actor_rollout_ref.rollout.checkpoint_engine.backend=naive.")
        state = {}
        if hasattr(weights, "__aiter__"):
            async for name, tensor in weights:
                state[name] = tensor.detach().to("cpu", copy=True)
        else:
            for name, tensor in weights:
                state[name] = tensor.detach().to("cpu", copy=True)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        server = ray.get_actor(_server_name(rank))
        await server.load_weights.remote(state, global_steps)


# ------------------------------------------------------------------------------------------------ process group
def dedup_backend(backend: Any) -> Any:
    """``"cpu:gloo,cpu:gloo"`` -> ``"cpu:gloo"``: drop repeated identical ``device:backend`` pairs; else unchanged."""
    if not isinstance(backend, str) or ":" not in backend:
        return backend
    pairs = [p.strip() for p in backend.split(",") if p.strip()]
    unique = list(dict.fromkeys(p.lower() for p in pairs))
    devices = [p.split(":", 1)[0] for p in unique]
    if len(unique) == len(pairs) or len(set(devices)) != len(devices):
        return backend  # nothing repeated, or one device with two different backends: torch's error stands
    return ",".join(unique)


def _patch_init_process_group() -> None:
    import torch.distributed as dist

    original = dist.init_process_group
    if getattr(original, "_meds_cpu", False):
        return

    def init_process_group(backend=None, *args, **kwargs):
        return original(dedup_backend(backend), *args, **kwargs)

    init_process_group._meds_cpu = True
    init_process_group.__wrapped__ = original
    init_process_group.__doc__ = original.__doc__
    dist.init_process_group = init_process_group


# ------------------------------------------------------------------------------------------------ registration
def register() -> None:
    """Register the platform, the CPU training engine and the ``hf_cpu`` rollout with veRL (idempotent)."""
    if PlatformRegistry.get("cpu") is None:
        PlatformRegistry.register(platform="cpu")(PlatformCPU)
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    fsdp = EngineRegistry._engines.get("language_model", {})
    if "cpu" not in fsdp.get("fsdp2", {}):
        EngineRegistry.register(model_type="language_model", backend=["fsdp", "fsdp2"], device="cpu")(
            FSDPEngineWithLMHead)
    if ROLLOUT_NAME not in RolloutReplicaRegistry._registry:
        RolloutReplicaRegistry.register(ROLLOUT_NAME, lambda: HFReplica)
    rollout_base._ROLLOUT_REGISTRY.setdefault((ROLLOUT_NAME, "async"), f"{__name__}.HFServerAdapter")
    _patch_init_process_group()


if os.environ.get("VERL_PLATFORM", "").strip().lower() == "cpu":
    register()
