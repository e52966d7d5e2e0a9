"""The numerics: CLIP text encoding, the sampler loop, VAE decoding.

Each imports torch at its top: only run functions import these modules.
"""
