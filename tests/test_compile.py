"""The run-wide U-Net set-up of issue 11: key hooks installed once per run, a compiled U-Net that
gives the eager step and never recompiles, device reads every --log-every steps, the automatic
checkpointing choice, a report whose stage times add up to the total, and (issue 20) compiling off
unless asked, with a failed compile going back to eager."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dmedit.cli.app import app
from dmedit.engine import editor
from dmedit.engine.compilation import (
    CACHE_ENV, CompileChoice, choose_compile, compile_counters, compile_failure, use_cache_folder,
)
from dmedit.core.config import EditConfig
from dmedit.core.errors import ModelError, UsageError
from dmedit.engine.speed import choose_checkpointing, step_memory_estimate
from test_cli_errors import assert_clean_failure, dmedit

KEYS = ("up_blocks.*.attentions.*.transformer_blocks.*.attn1",)
# Dynamo and AOTAutograd as `--compile` runs them (the same captured graphs, the same forward/backward
# split), without inductor's kernel generation: on this 2-core CPU inductor's first compiled step of
# the tiny model takes about 210 s (C++ compiles of each fused kernel), too long for `make test`;
# `make bench` measures it, and the CUDA test below runs inductor itself.
COMPILED = CompileChoice(enabled=True, mode="default", backend="aot_eager", reason="test")
FAILING_BACKEND = "dmedit-test-failing"


def _refuse_to_compile(graph_module, example_inputs):
    raise RuntimeError("planted: this backend cannot compile")


if FAILING_BACKEND not in torch._dynamo.list_backends(exclude_tags=()):
    torch._dynamo.register_backend(compiler_fn=_refuse_to_compile, name=FAILING_BACKEND)
FAILING = CompileChoice(enabled=True, mode="default", backend=FAILING_BACKEND, reason="test")
FULL_DISK_BACKEND = "dmedit-test-full-disk"


def _write_the_cache_on_a_full_disk(graph_module, example_inputs):
    """Inductor on a full disk: a temporary file of this process begun in the cache, then ENOSPC."""
    partial = Path(os.environ[CACHE_ENV]) / "fxgraph" / f".{os.getpid()}.1.tmp"
    partial.write_bytes(b"half a kernel")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(partial))


if FULL_DISK_BACKEND not in torch._dynamo.list_backends(exclude_tags=()):
    torch._dynamo.register_backend(compiler_fn=_write_the_cache_on_a_full_disk, name=FULL_DISK_BACKEND)
GIB = 2 ** 30


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    return torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _session(backend, frames, **levers) -> editor.EditSession:
    return editor.prepare(backend=backend, frames=frames, masks=None, src_prompt="a grey car",
                          tgt_prompt="a red car", config=EditConfig(steps=20, seed=3), key_layers=KEYS, **levers)


def _hooks(session: editor.EditSession) -> list[object]:
    return [hook for module in session.key_modules.values() for hook in module.to_k._forward_hooks.values()]


def test_key_hooks_are_registered_once_for_the_whole_run(tiny_backend, frames) -> None:
    session = _session(tiny_backend, frames)
    state = editor.new_state(session=session)
    with editor.run_hooks(session=session) as recorder:
        before = _hooks(session)
        for _ in range(20):
            editor.run_step(session=session, state=state, recorder=recorder)
        after = _hooks(session)
    assert len(before) == len(session.key_modules) == 2
    assert all(first is second for first, second in zip(before, after, strict=True))
    assert _hooks(session) == []


@pytest.mark.parametrize("checkpointing", [None, "layer"])
def test_run_wide_hooks_give_the_same_steps_as_per_call_hooks(tiny_backend, frames, checkpointing) -> None:
    """Hooks (and checkpointing, whose recomputation fires the hooks again) installed once per run."""
    per_call, run_wide = _session(tiny_backend, frames), _session(tiny_backend, frames, checkpointing=checkpointing)
    states = [editor.new_state(session=session) for session in (per_call, run_wide)]
    plain = [editor.run_step(session=per_call, state=states[0]) for _ in range(3)]
    with editor.run_hooks(session=run_wide) as recorder:
        hooked = [editor.run_step(session=run_wide, state=states[1], recorder=recorder) for _ in range(3)]
    for ours, theirs in zip(hooked, plain):
        assert ours.keys() == theirs.keys()
        assert all(ours[name] == pytest.approx(theirs[name], rel=1e-5, abs=1e-8) for name in ours)
    assert torch.allclose(states[0].latents, states[1].latents, atol=1e-6)


def test_the_compiled_step_equals_the_eager_step_and_never_recompiles(tiny_backend, frames) -> None:
    """20 steps with a different t each: the U-Net is traced into two graphs (the no-grad call and
    the grad call) on the first step and reused by every later one, with the same hook objects."""
    torch._dynamo.reset()
    frames = frames[:2]
    eager, compiled = _session(tiny_backend, frames), _session(tiny_backend, frames, compile=COMPILED)
    eager_state, compiled_state = (editor.new_state(session=session) for session in (eager, compiled))
    with editor.run_hooks(session=compiled) as recorder:
        hooks = _hooks(compiled)
        editor.run_step(session=compiled, state=compiled_state, recorder=recorder)
        after_first = compile_counters()
        compiled_terms = [editor.run_step(session=compiled, state=compiled_state, recorder=recorder)
                          for _ in range(19)]
        assert all(first is second for first, second in zip(hooks, _hooks(compiled), strict=True))
    eager_terms = [editor.run_step(session=eager, state=eager_state) for _ in range(20)][1:]
    assert after_first["graphs"] == 2 and compile_counters() == after_first
    assert len({terms["t"] for terms in compiled_terms}) > 10
    assert [terms["t"] for terms in compiled_terms] == [terms["t"] for terms in eager_terms]
    for ours, theirs in zip(compiled_terms, eager_terms):
        assert ours["dds"] == pytest.approx(theirs["dds"], rel=1e-3, abs=1e-6)
    # the stated tolerance: float32 kernels fused differently, 20 steps of lr 0.4 SGD
    assert torch.allclose(compiled_state.latents, eager_state.latents, atol=1e-3, rtol=1e-3)
    assert not hasattr(tiny_backend.unet, "_compiled_call_impl") or tiny_backend.unet._compiled_call_impl is None


def test_reading_the_device_every_k_steps_logs_every_step_in_order(tiny_backend, frames) -> None:
    seen: dict[int, list[tuple[int, dict]]] = {1: [], 7: []}
    results = {}
    for every in seen:
        session = editor.prepare(backend=tiny_backend, frames=frames, masks=None, src_prompt="a", tgt_prompt="b",
                                 config=EditConfig(steps=10, seed=1, checkpoint_every=100), key_layers=KEYS)
        results[every] = editor.optimise(session=session, log_every=every,
                                         on_step=lambda step, terms, every=every: seen[every].append((step, terms)))
    assert [step for step, _ in seen[7]] == list(range(10)) == [step for step, _ in seen[1]]
    assert seen[7] == seen[1] and results[7].history == results[1].history
    assert torch.equal(results[7].latents, results[1].latents)


def test_a_non_finite_step_is_named_even_when_read_late(tiny_backend, frames, monkeypatch) -> None:
    session = editor.prepare(backend=tiny_backend, frames=frames, masks=None, src_prompt="a", tgt_prompt="b",
                             config=EditConfig(steps=10, seed=1, lambda_spatial=0, lambda_temporal=0), key_layers=KEYS)
    predict, calls = tiny_backend.predict_noise, []

    def poisoned(**kwargs):
        calls.append(1)
        eps = predict(**kwargs)
        return eps * float("nan") if len(calls) >= 3 else eps

    monkeypatch.setattr(tiny_backend, "predict_noise", poisoned)
    with pytest.raises(ModelError, match="at step 3;"):
        editor.optimise(session=session, log_every=10)


def test_compile_is_off_unless_asked_on_every_device_and_graph_replay_needs_cuda() -> None:
    """Eager by default until committed GPU figures show compiling pays (issue 20)."""
    for device in ("cuda", "cpu"):
        off = choose_compile(requested=None, mode="default", device=torch.device(device))
        assert not off.enabled and "eager until GPU figures" in off.reason
    assert choose_compile(requested=True, mode="default", device=torch.device("cpu")).enabled
    with pytest.raises(UsageError, match="needs a CUDA device"):
        choose_compile(requested=True, mode="reduce-overhead", device=torch.device("cpu"))


def test_cli_refuses_graph_replay_on_the_cpu(tmp_path: Path, ntsc_clip: Path) -> None:
    output = tmp_path / "graphs.mp4"
    result = dmedit("run", str(ntsc_clip), "--src", "a", "--tgt", "b", "--model", "tiny", "--mask", "full",
                    "--device", "cpu", "--compile", "--compile-mode", "reduce-overhead", "-o", str(output))
    assert_clean_failure(result, code=2, mentions="needs a CUDA device", folder=tmp_path)
    assert not output.exists()


def test_auto_checkpointing_takes_the_least_recomputation_that_fits() -> None:
    estimate = {None: 60 * GIB, "block": 25 * GIB, "layer": 14 * GIB}
    assert choose_checkpointing(requested="auto", estimate=estimate, free_bytes=100 * GIB).granularity is None
    assert choose_checkpointing(requested="auto", estimate=estimate, free_bytes=40 * GIB).granularity == "block"
    assert choose_checkpointing(requested="auto", estimate=estimate, free_bytes=20 * GIB).granularity == "layer"
    squeezed = choose_checkpointing(requested="auto", estimate=estimate, free_bytes=5 * GIB)
    assert squeezed.granularity == "layer" and "may not fit" in squeezed.reason
    assert choose_checkpointing(requested="block", estimate=estimate, free_bytes=100 * GIB).granularity == "block"


def test_the_memory_estimate_reproduces_the_measured_zeroscope_steps() -> None:
    """ZeroScope's U-Net at 72x40 latents, fp16 (an H200, FACTS.md): 13.0 / 23.3 / 63.6 GB peak at
    8 / 16 / 48 frames, about 2.9 GB of it weights; 48 frames with layer checkpointing 15.1 GB."""
    with torch.device("meta"):
        from diffusers import UNet3DConditionModel

        unet = UNet3DConditionModel(cross_attention_dim=1024)
    weights = 2.88e9
    for frames, measured in ((8, 13.0e9), (16, 23.3e9), (48, 63.6e9)):
        estimate = step_memory_estimate(unet=unet, frames=frames, latent_height=40, latent_width=72,
                                        dtype=torch.float16)
        assert weights + estimate[None] == pytest.approx(measured, rel=0.05)
    layer = step_memory_estimate(unet=unet, frames=48, latent_height=40, latent_width=72, dtype=torch.float16)["layer"]
    assert weights + layer == pytest.approx(15.1e9, rel=0.05)


def test_the_report_accounts_for_every_second_of_the_run(tmp_path: Path, ntsc_clip: Path) -> None:
    output = tmp_path / "timed.mp4"
    result = dmedit("run", str(ntsc_clip), "--src", "a", "--tgt", "b", "--model", "tiny", "--mask", "full",
                    "--frames", "4", "--steps", "3", "-o", str(output))
    assert result.returncode == 0, result.stderr
    report = json.loads(output.with_suffix(".json").read_text())
    timings = report["timings_s"]
    stages = {name: value for name, value in timings.items() if name not in ("total", "unstaged")}
    assert {"start-up", "probe", "plan", "read", "masks", "load model", "vae encode", "text encode",
            "first step", "steps", "decode", "composite", "write"} <= set(stages)
    assert sum(stages.values()) + timings["unstaged"] == pytest.approx(timings["total"], abs=0.01)
    assert timings["unstaged"] <= 0.02 * timings["total"]
    assert report["speed"]["compile"]["enabled"] is False
    assert report["speed"]["checkpointing"]["granularity"] == "none"
    assert report["speed"]["checkpointing"]["reason"].startswith("auto:")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_replay_equals_eager_within_fp16_rounding(tiny_model_dir: Path) -> None:
    from dmedit.models.backends.text_to_video import load_text_to_video

    device = torch.device("cuda")
    backend = load_text_to_video(folder=tiny_model_dir, device=device, dtype=torch.float16,
                                 vae_dtype=torch.float32, variant=None, vae_chunk=8)
    clip = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    graphed = CompileChoice(enabled=True, mode="reduce-overhead", backend="inductor", reason="test")
    results = [editor.optimise(session=_session(backend, clip, **levers))
               for levers in ({}, {"compile": graphed}, {"compile": graphed})]
    assert torch.allclose(results[0].latents, results[1].latents, atol=2e-2)
    assert torch.equal(results[1].latents, results[2].latents)


def test_zeroscope_random_is_zeroscopes_architecture_in_the_hub_layout(tmp_path: Path, monkeypatch) -> None:
    """The builder behind `--model zeroscope-random` (make bench-gpu), checked on the meta device:
    ZeroScope's 1.41 B-parameter U-Net with its nine decoder key layers, a 1024-wide text encoder."""
    from diffusers import UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dmedit.engine.keys import select_key_layers
    from dmedit.models.backends import zeroscope_random
    from dmedit.models.registry import load_registry

    entry = load_registry().model("zeroscope-random")
    assert entry.builder == "zeroscope-random" and (entry.width, entry.height) == (576, 320)
    with torch.device("meta"):
        unet = UNet3DConditionModel(**zeroscope_random.ZEROSCOPE_UNET_CONFIG)
        reference = UNet3DConditionModel(cross_attention_dim=1024, attention_head_dim=64)
        text = CLIPTextModel(CLIPTextConfig(**zeroscope_random.ZEROSCOPE_TEXT_CONFIG))
    count = sum(parameter.numel() for parameter in unet.parameters())
    assert count == sum(parameter.numel() for parameter in reference.parameters())
    assert 1.40e9 < count < 1.42e9
    assert len(select_key_layers(unet=unet, patterns=entry.key_layers)) == 9
    assert text.config.hidden_size == 1024 and text.config.num_hidden_layers == 23

    saved = []
    monkeypatch.setattr(zeroscope_random, "save_text_to_video", lambda **kwargs: saved.append(kwargs))
    zeroscope_random.build_zeroscope_random(path=tmp_path / "zs")
    assert saved[0]["dtype"] == torch.float16 and saved[0]["positions"] == 77


# A compile that fails goes back to eager (issue 20): the eager result, one warning line, the report says so.
def _three_steps(session: editor.EditSession) -> editor.EditSession:
    return dataclasses.replace(session, config=dataclasses.replace(session.config, steps=3))


def test_a_failing_compile_runs_eager_to_the_eager_result(tiny_backend, frames) -> None:
    torch._dynamo.reset()
    warnings: list[str] = []
    fell_back = editor.optimise(session=_three_steps(_session(tiny_backend, frames[:2], compile=FAILING)),
                                on_warning=warnings.append)
    eager = editor.optimise(session=_three_steps(_session(tiny_backend, frames[:2])))
    assert len(warnings) == 1 and warnings[0].startswith("--compile failed, running eager: ")
    assert "planted: this backend cannot compile" in warnings[0]
    assert fell_back.compile_fallback is not None and "planted" in fell_back.compile_fallback
    assert eager.compile_fallback is None
    assert fell_back.history == eager.history and fell_back.steps_done == 3
    assert torch.allclose(fell_back.latents, eager.latents, rtol=1e-6, atol=1e-7)
    assert getattr(tiny_backend.unet, "_compiled_call_impl", None) is None


def test_the_inductor_cache_goes_to_dmedits_cache_unless_the_user_chose_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch._dynamo's import sets $TORCHINDUCTOR_CACHE_DIR to /tmp/torchinductor_USER: that is not
    the user's choice, so dmedit's <cache>/inductor replaces it; a folder the user set stays."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    ours = tmp_path / "dmedit-cache" / "inductor"
    monkeypatch.setenv(CACHE_ENV, default_cache_dir())
    assert use_cache_folder(folder=ours) == ours and os.environ[CACHE_ENV] == str(ours) and ours.is_dir()
    theirs = tmp_path / "theirs"
    monkeypatch.setenv(CACHE_ENV, str(theirs))
    assert use_cache_folder(folder=ours) == theirs and theirs.is_dir()


def test_a_compile_cache_that_cannot_be_written_stops_the_run_naming_it(
        tiny_backend, frames, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk while inductor writes its cache is a system error (exit 1, core.errors), not a
    reason to run eager; inductor's temporary file of this process is removed."""
    cache = tmp_path / "inductor"
    partial = cache / "fxgraph" / f".{os.getpid()}.1.tmp"
    partial.parent.mkdir(parents=True)
    monkeypatch.setenv(CACHE_ENV, str(cache))

    torch._dynamo.reset()
    warnings: list[str] = []
    full_disk = CompileChoice(enabled=True, mode="default", backend=FULL_DISK_BACKEND, reason="test")
    with pytest.raises(OSError) as raised:
        editor.optimise(session=_three_steps(_session(tiny_backend, frames[:2], compile=full_disk)),
                        on_warning=warnings.append)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(partial)
    assert "cannot write inductor's compile cache" in raised.value.strerror and "--no-compile" in raised.value.strerror
    assert warnings == [], "no fall-back to eager"
    assert not partial.exists()


def test_an_error_of_the_run_itself_is_not_taken_for_a_compile_failure(tiny_backend, frames, monkeypatch) -> None:
    calls: list[int] = []

    def broken(**kwargs):
        calls.append(1)
        raise ValueError("not the compiler's fault")

    monkeypatch.setattr(tiny_backend, "predict_noise", broken)
    compiled = CompileChoice(enabled=True, mode="default", backend="aot_eager", reason="test")
    warnings: list[str] = []
    with pytest.raises(ValueError, match="not the compiler's fault"):
        editor.optimise(session=_session(tiny_backend, frames[:2], compile=compiled), on_warning=warnings.append)
    assert warnings == [] and len(calls) == 1, "no fall-back to eager, no second try"


def test_only_compiler_errors_count_as_compile_failures() -> None:
    try:
        try:
            raise torch._dynamo.exc.Unsupported("graph break in a planted layer")
        except Exception as inner:
            raise RuntimeError("while compiling the U-Net") from inner
    except RuntimeError as outer:
        wrapped = outer
    assert compile_failure(wrapped) == ("RuntimeError: while compiling the U-Net "
                                        "Unsupported: graph break in a planted layer")
    assert compile_failure(ValueError("a shape error of the run")) is None
    assert compile_failure(torch.OutOfMemoryError("CUDA out of memory")) is None


def test_the_report_records_the_fallback_and_its_reason(tmp_path: Path, ntsc_clip: Path, monkeypatch) -> None:
    import dmedit.runs.levers

    monkeypatch.setattr(dmedit.runs.levers, "choose_compile", lambda **kwargs: FAILING)
    output = tmp_path / "fallback.mp4"
    result = CliRunner().invoke(app, ["run", str(ntsc_clip), "--src", "a", "--tgt", "b", "--model", "tiny",
                                      "--mask", "full", "--frames", "4", "--steps", "2", "--compile", "-o", str(output)])
    assert result.exit_code == 0, result.output
    assert result.output.count("warning: --compile failed, running eager") == 1
    compiled = json.loads(output.with_suffix(".json").read_text())["speed"]["compile"]
    assert compiled["enabled"] is True and compiled["fallback"] is True
    assert "planted: this backend cannot compile" in compiled["fallback_reason"]
