"""The learned verifier's training, evaluation and rounds (its network is `stages/verify`):
trained on people's accept / reject answers on the training loop (`engine.training.loop`),
its threshold chosen for a stated precision on answers it never trained on, measured on
others, registered beside the SAM and detector rounds."""
