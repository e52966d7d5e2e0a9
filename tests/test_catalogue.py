"""A catalogue of mistakes, and what ``sdflow check`` says about each.

Every recipe here is ComfyUI's default workflow with one thing wrong (or, for
the recovery cases, several things).  The clean original is ``DEFAULT``; each
case states the diagnostics that must come out, errors and warnings, as
``(code, line, column)``, exactly and in order.
"""

from __future__ import annotations

import subprocess
import textwrap

import pytest

from sdflow.graph import check_source
from sdflow.registry import default_registry
from cli import sdflow_cli


def recipe(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def check(source: str):
    """Every diagnostic of a recipe, syntax and semantic, in order."""
    _recipe, _graph, diagnostics = check_source(source, "recipe.sdflow", default_registry())
    return diagnostics


DEFAULT = recipe(
    """
    sdflow 1
    param seed = 42
    ckpt = load_checkpoint(name="sd15.safetensors")
    positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
    negative = clip_text_encode(clip=ckpt.clip, text="blurry")
    latent = empty_latent(width=512, height=512)
    denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                      latent=latent, seed=seed, steps=20, sampler="euler")
    image = vae_decode(vae=ckpt.vae, latent=denoised)
    save_image(image=image, prefix="txt2img")
    """
)


def test_the_default_workflow_is_clean():
    assert check(DEFAULT) == []


CATALOGUE = [
    # syntax -------------------------------------------------------------------
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E101", 3, 6)],
        id="E101-missing-equals-sign",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = 512
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E101", 6, 10)],
        id="E101-value-named-without-param",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512])
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E101", 6, 44)],
        id="E101-stray-closing-bracket",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img") twice
        """,
        [("E101", 10, 43)],
        id="E101-text-after-statement",
    ),
    pytest.param(
        """
        sdflow
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E101", 1, 7)],
        id="E101-header-without-version",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle)
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E102", 4, 50)],
        id="E102-unterminated-string",
    ),
    pytest.param(
        '''
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="""a red circle)
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        ''',
        [("E102", 4, 50)],
        id="E102-unterminated-long-string",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E103", 6, 22)],
        id="E103-parenthesis-never-closed",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512]
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E103", 6, 22)],
        id="E103-closed-by-the-wrong-bracket",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = [42, 43
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E103", 2, 14)],
        id="E103-list-never-closed",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E104", 6, 29)],
        id="E104-value-missing",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=empty_latent(width=512), seed=seed, steps=20)
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E104", 7, 38)],
        id="E104-stage-call-used-as-value",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512 height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E105", 6, 33)],
        id="E105-missing-comma",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width: 512, height: 512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E106", 6, 28)],
        id="E106-colon-instead-of-equals",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text='blurry')
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E106", 5, 50)],
        id="E106-single-quotes",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed * 2, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E106", 8, 44)],
        id="E106-arithmetic",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors"
        positive = clip_text_encode(clip=ckpt.clip, text='a red circle')
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512 height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E103", 3, 23), ("E106", 4, 50), ("E105", 6, 33), ("E104", 8, 39)],
        id="recovery-four-syntax-errors-at-once",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle"
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latnet(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E103", 4, 28), ("E220", 6, 10)],
        id="recovery-syntax-and-semantic-errors-together",
    ),
    # the version header ---------------------------------------------------------
    pytest.param(
        """
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E201", 1, 1)],
        id="E201-header-missing",
    ),
    pytest.param(
        """
        sdfow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E201", 1, 1)],
        id="E201-header-misspelled",
    ),
    pytest.param(
        """
        sdflow 2
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E202", 1, 8)],
        id="E202-unsupported-version",
    ),
    pytest.param(
        """
        param seed = 42
        sdflow 1
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E203", 2, 1)],
        id="E203-header-after-a-statement",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        sdflow 1
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E203", 3, 1)],
        id="E203-header-repeated",
    ),
    # names ----------------------------------------------------------------------
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        latent = empty_latent(width=768, height=768)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E210", 7, 1)],
        id="E210-result-name-defined-twice",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        param seed = 7
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E210", 3, 7)],
        id="E210-param-defined-twice",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = make_noise(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E220", 6, 10)],
        id="E220-unknown-stage-type",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, format="png")
        """,
        [("E230", 10, 25)],
        id="E230-unknown-argument",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512, width=768)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E231", 6, 46)],
        id="E231-argument-given-twice",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("W102", 6, 1), ("E232", 7, 12)],
        id="E232-input-missing",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint()
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E232", 3, 8)],
        id="E232-argument-missing",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=vae_decode, prefix="txt2img")
        """,
        [("W102", 9, 1), ("E240", 10, 18)],
        id="E240-stage-type-used-as-a-name",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text=prompt)
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E240", 4, 50)],
        id="E240-param-never-declared",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.unet, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E241", 4, 39)],
        id="E241-unknown-port",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E242", 4, 34)],
        id="E242-several-outputs-no-port",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        saved = save_image(image=image, prefix="txt2img")
        save_image(image=saved, prefix="again")
        """,
        [("E243", 11, 18)],
        id="E243-result-of-an-output-stage",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed.value, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E244", 8, 44)],
        id="E244-param-has-no-ports",
    ),
    # port types -----------------------------------------------------------------
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=positive)
        save_image(image=image, prefix="txt2img")
        """,
        [("W102", 7, 1), ("E300", 9, 41)],
        id="E300-result-of-the-wrong-type",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip="sd15.safetensors", text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E310", 4, 34)],
        id="E310-port-given-a-literal",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("W102", 6, 1), ("E310", 8, 26)],
        id="E310-port-given-a-param",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=latent, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("W101", 2, 7), ("E311", 8, 39)],
        id="E311-parameter-given-a-result",
    ),
    # values ---------------------------------------------------------------------
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps="20", sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E401", 8, 51)],
        id="E401-string-for-an-integer",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512.0, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E401", 6, 29)],
        id="E401-number-for-an-integer",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text=["blurry", "watermark"])
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E401", 5, 50)],
        id="E401-list-for-a-string",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=0, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E402", 8, 51)],
        id="E402-below-the-minimum",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, denoise=1.5)
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E402", 8, 63)],
        id="E402-above-the-maximum",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=500, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E402", 6, 29)],
        id="E402-not-a-multiple-of-8",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="")
        """,
        [("E402", 10, 32)],
        id="E402-empty-string",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = -1
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E402", 8, 39)],
        id="E402-out-of-range-through-a-param",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, scheduler="Karras")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E403", 8, 65)],
        id="E403-not-one-of-the-choices",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt\x002img")
        """,
        [("E409", 10, 32)],
        id="E409-prefix-with-a-nul-character",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = latent
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E412", 2, 14)],
        id="E412-param-default-not-a-value",
    ),
    # the whole graph ------------------------------------------------------------
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=denoised, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("W102", 6, 1), ("E500", 7, 1)],
        id="E500-stage-consumes-its-own-result",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = sample(model=ckpt.model, positive=positive, negative=negative, latent=denoised)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("E500", 6, 1)],
        id="E500-two-stages-in-a-loop",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        """,
        [("E501", 9, 1), ("W102", 9, 1)],
        id="E501-no-output-stage",
    ),
    # warnings -------------------------------------------------------------------
    pytest.param(
        """
        sdflow 1
        param seed = 42
        param steps = 30
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("W101", 3, 7)],
        id="W101-param-never-used",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        large = empty_latent(width=1024, height=1024)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("W102", 7, 1)],
        id="W102-result-never-used",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        clip_text_encode(clip=ckpt.clip, text="forgotten")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        [("W103", 6, 1)],
        id="W103-result-thrown-away",
    ),
]


@pytest.mark.parametrize("source, expected", CATALOGUE)
def test_catalogue(source, expected):
    diagnostics = check(recipe(source))
    assert [(d.code, d.span.line, d.span.column) for d in diagnostics] == expected


def test_catalogue_covers_every_code():
    codes = {code for case in CATALOGUE for code, _line, _column in case.values[1]}
    codes |= {case.values[1] for case in HELP_LINES}
    documented = (
        "E101 E102 E103 E104 E105 E106 E201 E202 E203 E210 E220 E230 E231 E232 E240 E241 "
        "E242 E243 E244 E300 E310 E311 E401 E402 E403 E409 E412 E500 E501 W101 W102 W103"
    ).split()
    assert sorted(set(documented) - codes) == []


# the help line names the fix, and the near miss --------------------------------------

HELP_LINES = [
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latnet(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        "E220", (6, 10),
        "unknown stage type 'empty_latnet'",
        "did you mean 'empty_latent'?",
        id="misspelled-stage-type",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefx="txt2img")
        """,
        "E230", (10, 25),
        "'save_image' has no argument 'prefx'",
        "did you mean 'prefix'?",
        id="misspelled-argument",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler_ancestrl")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        "E403", (8, 63),
        "'sampler' cannot be 'euler_ancestrl'",
        "did you mean 'euler_ancestral'?",
        id="misspelled-sampler",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.model, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        "E300", (4, 34),
        "'clip' expects CLIP, but ckpt.model is MODEL",
        "did you mean 'ckpt.clip'?",
        id="wrong-port-of-the-right-stage",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clp, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        "E241", (4, 39),
        "'ckpt' (load_checkpoint) has no output 'clp'",
        "did you mean 'clip'?",
        id="misspelled-port",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=sed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        "E240", (8, 39),
        "unknown name 'sed'",
        "did you mean 'seed'?",
        id="misspelled-param-name",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512)
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        "E232", (7, 12),
        "'sample' needs input 'latent' (LATENT)",
        "add latent=latent",
        id="missing-input-names-a-source-but-not-itself",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = [512, 512]
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        "E101", (6, 10),
        "unexpected '['; expected a name",
        "a result comes from a stage call; to name a value, write: param latent = [...]",
        id="value-named-without-param",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        latent = empty_latent(width=512, height=512])
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=latent, seed=seed, steps=20, sampler="euler")
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        "E101", (6, 44),
        "unexpected ']'; expected ')' or ','",
        "there is no opening bracket for this ']' to close",
        id="stray-closing-bracket",
    ),
    pytest.param(
        """
        sdflow 1
        param seed = 42
        ckpt = load_checkpoint(name="sd15.safetensors")
        positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
        negative = clip_text_encode(clip=ckpt.clip, text="blurry")
        denoised = sample(model=ckpt.model, positive=positive, negative=negative,
                          latent=empty_latent(width=512), seed=seed, steps=20)
        image = vae_decode(vae=ckpt.vae, latent=denoised)
        save_image(image=image, prefix="txt2img")
        """,
        "E104", (7, 38),
        "unexpected '('; expected ')', ',' or '.'",
        "a stage call cannot be a value: give it a name on a line of its own, then use the name",
        id="stage-call-used-as-value",
    ),
]


@pytest.mark.parametrize("source, code, position, message, help", HELP_LINES)
def test_help_line_names_the_fix(source, code, position, message, help):
    errors = [d for d in check(recipe(source)) if d.is_error]
    assert [(d.code, (d.span.line, d.span.column), d.message, d.help) for d in errors] == [
        (code, position, message, help)
    ]


# the same, as `sdflow check` shows it -----------------------------------------


def case_recipe(cases, case_id: str) -> str:
    return next(case.values[0] for case in cases if case.id == case_id)


def sdflow_check(tmp_path, source: str | None, *options: str) -> subprocess.CompletedProcess:
    """Run ``sdflow check recipe.sdflow`` in a fresh process, as a user would."""
    if source is not None:
        (tmp_path / "recipe.sdflow").write_text(recipe(source), encoding="utf-8")
    return sdflow_cli("check", "recipe.sdflow", *options, cwd=tmp_path)


def test_cli_shows_an_error_like_a_compiler(tmp_path):
    result = sdflow_check(tmp_path, case_recipe(HELP_LINES, "misspelled-stage-type"))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "recipe.sdflow:6:10: E220 unknown stage type 'empty_latnet'\n"
        "  |\n"
        "6 | latent = empty_latnet(width=512, height=512)\n"
        "  |          ^^^^^^^^^^^^\n"
        "  = help: did you mean 'empty_latent'?\n"
        "\n"
        "1 error\n"
    )


def test_cli_shows_every_syntax_error_with_its_caret(tmp_path):
    result = sdflow_check(tmp_path, case_recipe(CATALOGUE, "recovery-four-syntax-errors-at-once"))
    assert result.returncode == 1
    err = result.stderr
    assert (
        "recipe.sdflow:4:50: E106 a string in single quotes\n"
        "  |\n"
        "4 | positive = clip_text_encode(clip=ckpt.clip, text='a red circle')\n"
        "  |                                                  ^^^^^^^^^^^^^^\n"
        "  = help: strings are written in plain double quotes: \"a red circle\"\n"
    ) in err
    assert (
        "recipe.sdflow:6:33: E105 unexpected 'height'; expected ')' or ','\n"
        "  |\n"
        "6 | latent = empty_latent(width=512 height=512)\n"
        "  |                                 ^^^^^^\n"
        "  = help: separate items with ','\n"
    ) in err
    assert [line.split(" ")[0] for line in err.splitlines() if line.startswith("recipe.sdflow:")] == [
        "recipe.sdflow:3:23:", "recipe.sdflow:4:50:", "recipe.sdflow:6:33:", "recipe.sdflow:8:39:",
    ]
    assert err.endswith("\n4 errors\n")


def test_cli_warnings_alone_exit_0_and_fail_with_strict(tmp_path):
    source = case_recipe(CATALOGUE, "W101-param-never-used")
    expected = (
        "recipe.sdflow:3:7: W101 param 'steps' is never used\n"
        "  |\n"
        "3 | param steps = 30\n"
        "  |       ^^^^^\n"
        "  = help: use it or remove it\n"
        "\n"
        "1 warning\n"
    )
    result = sdflow_check(tmp_path, source)
    assert (result.returncode, result.stderr) == (0, expected)
    strict = sdflow_check(tmp_path, None, "--strict")
    assert (strict.returncode, strict.stderr) == (1, expected)


def test_cli_clean_recipe_exits_0(tmp_path):
    result = sdflow_check(tmp_path, DEFAULT)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "recipe.sdflow: ok\n")


def test_cli_missing_file_exits_2(tmp_path):
    result = sdflow_check(tmp_path, None)
    assert (result.returncode, result.stderr) == (2, "sdflow: error: recipe.sdflow: no such file\n")


def test_cli_unknown_set_name_exits_2(tmp_path):
    result = sdflow_check(tmp_path, DEFAULT, "--set", "sed=7")
    assert result.returncode == 2
    assert result.stderr == (
        "sdflow: error: --set sed=...: the recipe has no param 'sed'; did you mean 'seed'?\n"
    )


def test_cli_set_value_reaches_the_stage_and_is_checked_there(tmp_path):
    result = sdflow_check(tmp_path, DEFAULT, "--set", "seed=-1")
    assert result.returncode == 1
    assert result.stderr.startswith(
        "recipe.sdflow:8:39: E402 'seed' must be at least 0, got -1\n"
        "  |\n"
        "8 |                   latent=latent, seed=seed, steps=20, sampler=\"euler\")\n"
        "  |                                       ^^^^\n"
        "  = help: the value comes from param 'seed'; 'seed' ranges from 0 to 18446744073709551615\n"
    )
