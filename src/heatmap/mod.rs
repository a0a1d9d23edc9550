//! Heatmaps (paper 3.1.1, Eq. 2): sources, patch pooling and normalisation, salient region.
