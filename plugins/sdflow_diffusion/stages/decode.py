"""vae_decode: latents to pixels."""

from __future__ import annotations

from sdflow.plugin import ComfyNode, Params, Port, stage


class VaeDecode(Params):
    pass


@stage(
    params=VaeDecode,
    inputs={"vae": Port("VAE", "the autoencoder"), "latent": Port("LATENT", "the latent")},
    outputs={"image": Port("IMAGE", "the decoded images")},
    comfyui=ComfyNode("VAEDecode", inputs="samples>latent vae", title="VAE Decode"),
)
def vae_decode(ctx, params: VaeDecode, vae, latent) -> dict:
    """Decode latents into images with the VAE. ComfyUI: VAEDecode."""
    from sdflow_diffusion.numerics.decode import decode

    return {"image": decode(vae, latent)}
