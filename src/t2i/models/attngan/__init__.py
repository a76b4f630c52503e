"""AttnGAN (Xu et al. 2018, arXiv 1711.10485): DAMSM text/image encoders, then a multi-stage generator with
word attention. vocab (AttnGAN's word tokenizer and vocabulary), damsm (the encoders), objective (the DAMSM
matching losses and the word attention they share with the generator), damsm_trainer (`t2i train damsm`)."""
