//! Dual encoder (paper Eq. 3-5): ViT image tower, BERT text tower, projections into one space.
