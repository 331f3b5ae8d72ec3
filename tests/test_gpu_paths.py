"""The GPU-only code paths, checked on CPU with stand-ins (issue 17).

- cross-device resume: a checkpoint's optimizer ``fused`` flag must not replace
  the current device's (GradScaler('cpu') + fused CPU optimizers stand in for CUDA);
- the CUDA RNG state is restored for the current device only (a fake state list);
- ``--compile`` keeps at most 2 compiled versions per architecture through head
  warm-up, partial batches and both augmentation levels (dynamo's guards are
  the same with the "eager" backend, which skips code generation), and
  prediction through CUDA graphs (``--compile-mode reduce-overhead``) adds at most one;
- the training loop makes no host synchronisation per step;
- the device cache leaves a stated working set free;
- channels_last for loaded models and precise BatchNorm, and bf16 only where native.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from noisystudent import device as device_module
from noisystudent import models
from noisystudent.config.run_config import RunConfig
from noisystudent.data import cache as cache_module
from noisystudent.data.demo import generate_demo
from noisystudent.models import checkpoint
from noisystudent.run import pipeline
from noisystudent.training import engine, optim, trainer
from noisystudent.training.augment import create_augment, random_dihedral
from noisystudent.training.engine import StepContext, TrainSet
from noisystudent.training.seeding import make_generator

OPTIMIZERS = {"sgd": lambda p, **kw: torch.optim.SGD(p, lr=0.1, momentum=0.9, **kw),
              "adam": lambda p, **kw: torch.optim.Adam(p, lr=0.01, **kw),
              "adamw": lambda p, **kw: torch.optim.AdamW(p, lr=0.01, **kw)}


def _fused(flag: bool | None) -> dict:
    return {} if flag is None else {"fused": flag}


def _scaled_steps(model, optimizer, scaler, steps: int = 2) -> None:
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = model(x).square().mean()
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()


# --- 1. cross-device resume ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("saved_fused, current_fused", [(None, True), (True, None)])
def test_resume_keeps_the_current_devices_fused_flag_with_fp16_scaling(name, saved_fused, current_fused):
    """CPU checkpoint (fused=None) -> GPU optimizer (fused=True) with GradScaler, and back."""
    torch.manual_seed(0)
    before = torch.nn.Linear(3, 2)
    saved_opt = OPTIMIZERS[name](before.parameters(), **_fused(saved_fused))
    _scaled_steps(before, saved_opt, torch.amp.GradScaler("cpu") if saved_fused else None)
    saved = saved_opt.state_dict()

    after = torch.nn.Linear(3, 2)
    after.load_state_dict(before.state_dict())
    optimizer = OPTIMIZERS[name](after.parameters(), **_fused(current_fused))
    scaler = torch.amp.GradScaler("cpu") if current_fused else None  # fp16 scaling where the step is fused
    optim.load_optimizer_state(optimizer, saved)
    assert optimizer.param_groups[0].get("fused") == current_fused
    _scaled_steps(after, optimizer, scaler)  # raised AssertionError (grad_scale given to an unfused step)
    assert all(torch.isfinite(p).all() for p in after.parameters())
    assert optimizer.state_dict()["state"].keys() == saved["state"].keys()  # momentum / moments kept


def test_plain_load_state_dict_is_what_crashed():
    """The failure the helper prevents, so that the test above keeps meaning something."""
    model = torch.nn.Linear(3, 2)
    saved = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9).state_dict()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=True)
    scaler = torch.amp.GradScaler("cpu")
    optimizer.load_state_dict(saved)
    with pytest.raises(AssertionError):
        _scaled_steps(model, optimizer, scaler, steps=1)


@pytest.mark.slow
def test_trainer_resume_of_a_cpu_checkpoint_into_a_fused_fp16_step(tmp_path):
    """trainer._resume as a GPU run with --amp fp16 does it, the checkpoint written by a CPU run."""
    from types import SimpleNamespace

    from noisystudent import layout

    torch.manual_seed(0)
    cpu_model = torch.nn.Linear(3, 2)
    cpu_opt = torch.optim.SGD(cpu_model.parameters(), lr=0.1, momentum=0.9)  # create_optimizer on CPU: not fused
    _scaled_steps(cpu_model, cpu_opt, None)
    checkpoint.save(tmp_path / layout.CHECKPOINT, {
        "model": cpu_model.state_dict(), "optimizer": cpu_opt.state_dict(), "scheduler": None, "scaler": None,
        "next_epoch": 1, "rng": checkpoint.capture_rng_state(),
        "train_state": {"next_epoch": 1, "best_score": 0.5, "best_epoch": 1, "best_state": None, "stale_epochs": 0,
                        "history": []},
    })
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=True)  # as on CUDA
    scaler = torch.amp.GradScaler("cpu")
    state = trainer._resume(SimpleNamespace(out_dir=tmp_path, name="fold 0 teacher", identity=None), trainer.Training(model, optimizer, None, scaler))
    assert state.next_epoch == 1 and optimizer.param_groups[0]["fused"] is True
    _scaled_steps(model, optimizer, scaler)  # AssertionError before the fix


# --- 2. CUDA RNG state of the current device only --------------------------------------------------------


def test_cuda_rng_restored_for_the_current_device_only():
    calls = []
    states = [torch.full((4,), i, dtype=torch.uint8) for i in range(4)]  # saved with 4 GPUs visible
    assert checkpoint.restore_cuda_rng_state(states, 2, set_state=lambda s, i: calls.append((int(s[0]), i)))
    assert calls == [(2, 2)]


def test_cuda_rng_with_fewer_gpus_is_skipped_with_a_warning(caplog):
    calls = []
    with caplog.at_level(logging.WARNING, logger="noisystudent.models.checkpoint"):
        assert not checkpoint.restore_cuda_rng_state([torch.zeros(4, dtype=torch.uint8)], 1,
                                                     set_state=lambda s, i: calls.append(i))
    assert calls == [] and "none for cuda:1" in caplog.text


def test_unusable_cuda_rng_state_is_skipped(caplog):
    def refuse(state, index):
        raise RuntimeError("RNG state is wrong size")

    with caplog.at_level(logging.WARNING, logger="noisystudent.models.checkpoint"):
        assert not checkpoint.restore_cuda_rng_state([torch.zeros(3)], 0, set_state=refuse)
    assert "unusable" in caplog.text


def test_restore_rng_state_never_sets_all_devices(monkeypatch):
    """A checkpoint saved with 2 GPUs, resumed with 1 visible: set_rng_state_all raised IndexError."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: (_ for _ in ()).throw(IndexError("list index")))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": calls.append((int(state[0]), device)))
    state = {"python": __import__("random").getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "cuda": [torch.full((4,), 7, dtype=torch.uint8), torch.full((4,), 8, dtype=torch.uint8)]}
    checkpoint.restore_rng_state(state)
    assert calls == [(7, 0)]


# --- 3. torch.compile: at most 2 compiled versions per architecture ------------------------------------


def _compiled_versions(module_type: type) -> int:
    from torch._C._dynamo.eval_frame import _debug_get_cache_entry_list

    return len(_debug_get_cache_entry_list(module_type.forward.__code__))


@pytest.mark.slow
def test_compiled_run_stays_within_two_versions_per_architecture(tmp_path, monkeypatch):
    """Head warm-up, partial last batches, light (teacher) and strong (student) noise, dropout 0.2 and 0.5.

    Before the fixes this run compiled a version for the frozen warm-up, for
    every partial batch size and for the transposed layout of light noise.
    """
    import torch._dynamo
    from efficientnet_pytorch import EfficientNet
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setattr(trainer, "COMPILE_OPTIONS", {"backend": "eager"})
    data = generate_demo(tmp_path / "data", n_patients_per_class=3, cells_per_patient=4, size=16, seed=5)
    config = RunConfig(
        data=str(data), folds=2, rounds=1, epochs=2, head_warmup_epochs=1, image_size=16, batch_size=5,
        weights="none", compile=True, eval_batch_size=64, workers=1, device="cpu",
        test_fraction=0,  # 3 patients per class cannot spare a fifth: a hold-out would leave a fold no masked patient
    )  # 24 images: 12 labelled per fold -> batches of 5, 5, 2 (partial) every epoch
    pipeline.run_kfold(config, tmp_path / "run")
    versions = _compiled_versions(EfficientNet)
    graphs = counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    assert 1 <= versions <= 2, versions  # teacher (dropout 0.2) and student (0.5)
    assert graphs <= 2, graphs


@pytest.mark.slow
def test_prediction_graphs_add_one_version_far_below_dynamos_limit(tmp_path, monkeypatch):
    """--compile-mode reduce-overhead also compiles the models that predict (eval mode, full batches).

    Dynamo runs a function uncompiled, silently, after 8 versions; prediction must
    not push a run there. CUDA graphs exist on CUDA only, so here prediction is
    compiled as on CUDA with the eager backend (the same guards).
    """
    import torch._dynamo
    from efficientnet_pytorch import EfficientNet

    torch._dynamo.reset()
    monkeypatch.setattr(trainer, "COMPILE_OPTIONS", {"backend": "eager"})
    monkeypatch.setattr(pipeline, "COMPILE_OPTIONS", {"backend": "eager"})
    compiled = []

    def graphs_as_on_cuda(model, enabled, mode, device, base):
        compiled.append(mode)
        return torch.compile(model, **base)

    monkeypatch.setattr(pipeline, "prediction_graphs", graphs_as_on_cuda)
    data = generate_demo(tmp_path / "data", n_patients_per_class=3, cells_per_patient=4, size=16, seed=5)
    config = RunConfig(
        data=str(data), folds=2, rounds=2, epochs=2, head_warmup_epochs=1, image_size=16, batch_size=5,
        weights="none", compile=True, compile_mode="reduce-overhead", eval_batch_size=8, workers=1, device="cpu",
        test_fraction=0,
    )  # 2 folds x (teacher + 2 students), each predicting its images in batches of 8 and a partial one
    pipeline.run_kfold(config, tmp_path / "run")
    versions = _compiled_versions(EfficientNet)
    torch._dynamo.reset()
    assert compiled == ["reduce-overhead"] * 6  # every model of every fold predicted through the graphs
    assert 2 <= versions <= 3, versions  # training: teacher and student; prediction: at most one more


def test_light_augmentation_output_is_contiguous():
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    for seed in range(4):
        assert random_dihedral(x, torch.Generator().manual_seed(seed)).is_contiguous()
    out = create_augment("light", image_size=8)(x, torch.Generator().manual_seed(0))
    assert out.is_contiguous() and out.stride() == torch.empty(16, 3, 8, 8).stride()


@pytest.mark.slow
def test_partial_batches_train_on_the_uncompiled_model():
    seen = {"full": [], "partial": []}

    class Tag(torch.nn.Module):
        def __init__(self, inner, key):
            super().__init__()
            self.inner, self.key = inner, key

        def forward(self, x):
            seen[self.key].append(len(x))
            return self.inner(x)

    inner = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    images = torch.randint(0, 256, (11, 3, 4, 4), dtype=torch.uint8)
    step = StepContext(optimizer=torch.optim.SGD(inner.parameters(), lr=0.1), device=torch.device("cpu"))
    engine.train_one_epoch(Tag(inner, "full"), lambda rows: images[rows], TrainSet(torch.arange(11), torch.eye(2)[torch.arange(11) % 2]),
                           create_augment("none"), step, make_generator(0), batch_size=4,
                           partial_batch_model=Tag(inner, "partial"))
    assert seen == {"full": [4, 4], "partial": [3]}


# --- 4. no host synchronisation per step ------------------------------------------------------------------


class SyncCounter:
    """Counts what makes the host wait for a GPU, called while the training loop runs.

    On a CPU the calls are the same as on a GPU, so they can be counted here:
    device-to-host reads (``item``, ``cpu``, ``tolist``, ``numpy``),
    ``torch.cuda.synchronize`` and copies to a device that are not ``non_blocking``.
    """

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        for name in ("item", "cpu", "tolist", "numpy"):
            self._wrap(monkeypatch, torch.Tensor, name, lambda args, kwargs, name=name: name)
        self._wrap(monkeypatch, torch.Tensor, "to", self._blocking_copy)
        self._wrap(monkeypatch, torch.cuda, "synchronize", lambda args, kwargs: "synchronize")
        self.active = False

    def _wrap(self, monkeypatch, owner, name, describe):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            if self.active:
                what = describe(args, kwargs)
                if what:
                    self.calls.append(what)
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    @staticmethod
    def _blocking_copy(args, kwargs):
        to_device = any(isinstance(a, (torch.device, str)) for a in args[1:]) or "device" in kwargs
        return "blocking .to(device)" if to_device and not kwargs.get("non_blocking") else None


@pytest.mark.slow
@pytest.mark.parametrize("log_every", [0, 4])
def test_training_loop_syncs_only_to_report_the_loss(monkeypatch, log_every):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    model(torch.zeros(2, 3, 8, 8))
    train_set = TrainSet(torch.arange(40), torch.eye(2)[torch.arange(40) % 2])
    step = StepContext(optimizer=torch.optim.SGD(model.parameters(), lr=0.01), device=torch.device("cpu"))
    counter = SyncCounter(monkeypatch)
    augment = create_augment("strong", image_size=8)
    augment(images[:2], make_generator(0))  # makes the noise's constants on the device once (lru_cache)
    labels = train_set.labels  # numpy labels are read before the loop
    monkeypatch.setattr(TrainSet, "labels", property(lambda self: labels))
    counter.active = True
    engine.train_one_epoch(model, lambda rows: images[rows], train_set, augment, step, make_generator(0),
                           batch_size=4, log_every=log_every)  # 10 steps
    counter.active = False
    expected = 1 + (10 // log_every if log_every else 0)  # the final loss read and every log_every-th step
    assert counter.calls == ["item"] * expected, counter.calls


def test_to_device_is_non_blocking(monkeypatch):
    calls = []
    original = torch.Tensor.to
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: calls.append(k.get("non_blocking")) or original(self, *a, **k))
    device_module.to_device(torch.arange(3), "cpu")
    assert calls == [True]


# --- 5. the device cache leaves a working set ---------------------------------------------------------------


def test_device_cache_budget_reserves_the_working_set():
    gib = 2**30
    assert cache_module.GPU_WORKING_SET == 16 * gib
    assert cache_module.device_cache_budget(80 * gib) == pytest.approx((80 - 16) * gib * 0.9)
    assert cache_module.device_cache_budget(10 * gib) == 0  # less free than the working set: stays on the host
    # 63 GB of cache on an 80 GB card with 79 GiB free no longer fits (it did with 80 % of free memory)
    assert 63e9 > cache_module.device_cache_budget(79 * gib)
    # kfold --concurrent 5 on an H200: five working sets reserved, a fifth of the rest each
    assert cache_module.device_cache_budget(139 * gib, sharers=5) == pytest.approx((139 - 5 * 16) * gib * 0.9 / 5)
    assert cache_module.device_cache_budget(60 * gib, sharers=5) == 0


def test_cache_placement_uses_the_budget(monkeypatch, tmp_path):
    """A 'cuda' placement on CPU: 16 GiB + 2 MiB free leave 1.8 MiB beside the working set: 3 MiB stay on the host."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (16 * 2**30 + 2 * 2**20, 80 * 2**30))
    fake = cache_module.ImageCache.__new__(cache_module.ImageCache)
    fake.array = np.zeros((4, 3, 512, 512), dtype=np.uint8)  # 3 MiB
    assert fake._place(torch.device("cuda", 0)).device.type == "cpu"
    monkeypatch.setattr(cache_module, "GPU_WORKING_SET", 0)
    moved = []
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: moved.append(a) or self)
    fake._place(torch.device("cuda", 0))
    assert moved


# --- 6. channels_last and bf16 ----------------------------------------------------------------------------


def test_auto_amp_uses_bf16_only_where_native(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert device_module.amp_dtype("auto", cuda) == torch.float16  # emulated only (pre-Ampere)
    assert device_module.amp_dtype("bf16", cuda) == torch.bfloat16  # asked for explicitly
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert device_module.amp_dtype("auto", cuda) == torch.bfloat16
    assert device_module.amp_dtype("auto", torch.device("cpu")) is None


def test_precise_batchnorm_feeds_channels_last_when_asked():
    layouts = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = torch.nn.BatchNorm2d(3)

        def forward(self, x):
            layouts.append(x.is_contiguous(memory_format=torch.channels_last))
            return self.bn(x)

    model = Probe().train()
    images = torch.randint(0, 256, (8, 3, 4, 4), dtype=torch.uint8)
    engine.recalibrate_batchnorm(model, lambda rows: images[rows], torch.arange(8), lambda x: x.float(),
                                 make_generator(0), 4, 2, channels_last=True)
    assert layouts == [True, True]


def test_loaded_model_is_channels_last_on_cuda(monkeypatch, tmp_path):
    from noisystudent.models import model_file as model_io

    model = models.create_model("resnet18", 2, weights="none")
    spec = models.model_spec("resnet18", 2, 0.0, 0.0, 0)
    checkpoint.save(tmp_path / "model.pt", {"spec": spec, "model": model.state_dict()})
    formats = []
    original = torch.nn.Module.to

    def record(self, *args, **kwargs):
        if "memory_format" in kwargs:
            formats.append(kwargs["memory_format"])
            return self
        return original(self, "cpu") if args and str(args[0]).startswith("cuda") else original(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", record)
    model_io.load_model_file(tmp_path / "model.pt", torch.device("cuda"))
    assert formats == [torch.channels_last]
    formats.clear()
    model_io.load_model_file(tmp_path / "model.pt", torch.device("cuda"), channels_last=False)
    model_io.load_model_file(tmp_path / "model.pt", torch.device("cpu"))
    assert formats == []


@pytest.mark.slow
def test_resumed_optimizer_state_takes_the_parameters_memory_layout():
    """A contiguous (CPU) checkpoint loaded into a channels_last model: exp_avg gets the weights' strides,
    as the fused kernels require (an H200 resume failed on exactly this)."""
    from noisystudent.training.optim import load_optimizer_state

    source = torch.nn.Conv2d(3, 4, 3)
    saved_opt = torch.optim.Adam(source.parameters(), lr=0.1)
    source(torch.randn(2, 3, 8, 8)).sum().backward()
    saved_opt.step()
    saved = saved_opt.state_dict()

    target = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(target.parameters(), lr=0.1)
    load_optimizer_state(optimizer, saved)
    weight = target.weight
    assert weight.stride() != source.weight.stride()  # the layouts really differ
    for key in ("exp_avg", "exp_avg_sq"):
        state = optimizer.state[weight][key]
        assert state.stride() == weight.stride()
        torch.testing.assert_close(state, saved_opt.state[source.weight][key])
