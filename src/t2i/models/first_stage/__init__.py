"""First stages: autoencoders that turn images into the latents a second stage models.

Two bottlenecks, one training mechanism. The VQGAN (`vqgan.py`, taming-transformers) quantises its
latents to codebook ids, DALL-E's image tokens; the KL autoencoder (`autoencoder_kl.py`, LDM, built from
diffusers' AutoencoderKL) keeps a diagonal Gaussian posterior whose samples latent diffusion denoises.
Both train with one objective (`objective.py`: L1 + LPIPS + the bottleneck's term + a patch-GAN with
adaptive weight, `discriminator.py`) in one trainer (`trainer.py`), registered as `t2i train vqgan`
(`vqgan_trainer.py`) and `t2i train autoencoder` (`autoencoder_trainer.py`). `cache.py` encodes a
dataset once per (content, weights) for either; `taming.py` loads taming-transformers VQGAN checkpoints.
"""
