//! Training: SFT and preference losses (paper Eq. 1, Eq. 13), optimiser, checkpoints.
