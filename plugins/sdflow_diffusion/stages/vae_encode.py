"""vae_encode and vae_encode_for_inpaint: pixels to latents, for img2img and inpainting."""

from __future__ import annotations

from pydantic import Field

from sdflow.plugin import ComfyNode, Params, Port, stage

_VAE = {"vae": Port("VAE", "the autoencoder"), "image": Port("IMAGE", "the images to encode")}


class VaeEncode(Params):
    pass


@stage(params=VaeEncode, inputs=_VAE, outputs={"latent": Port("LATENT", "the images' latents")},
       comfyui=ComfyNode("VAEEncode", inputs="pixels>image vae", title="VAE Encode"))
def vae_encode(ctx, params: VaeEncode, vae, image) -> dict:
    """Encode images into latents with the VAE, to redraw them with sample at a denoise below 1
    (img2img). ComfyUI: VAEEncode.

    An image whose sides are not multiples of 8 pixels is cropped to them, centred, as ComfyUI does.
    The latent is the mean of the VAE's distribution: the same image always gives the same latent."""
    from sdflow_diffusion.numerics.vae_encode import encode

    return {"latent": encode(vae, image)}


class VaeEncodeForInpaint(Params):
    grow_mask_by: int = Field(6, ge=0, le=64, description="pixels the mask is grown by, so the repainted "
                                                          "region blends in")


@stage(
    params=VaeEncodeForInpaint,
    inputs={**_VAE, "mask": Port("MASK", "where to repaint (1)")},
    outputs={"latent": Port("LATENT", "the latents, with the mask as their noise mask")},
    comfyui=ComfyNode("VAEEncodeForInpaint", inputs="pixels>image vae mask", widgets="grow_mask_by",
                      title="VAE Encode (for Inpainting)"),
)
def vae_encode_for_inpaint(ctx, params: VaeEncodeForInpaint, vae, image, mask) -> dict:
    """Encode images for inpainting: the masked pixels are painted grey before encoding, and the
    mask (grown by grow_mask_by pixels) becomes the latent's noise mask, so sample repaints only
    there. Use it with denoise 1, and with an inpainting checkpoint for the best seams.
    ComfyUI: VAEEncodeForInpaint.

    The mask is resized to the image (bilinear) and rounded to 0 or 1, as ComfyUI does; a batch of
    one mask serves every image."""
    from sdflow_diffusion.numerics.vae_encode import encode_for_inpaint

    return {"latent": encode_for_inpaint(vae, image, mask, params.grow_mask_by)}
