//! Preference curation (paper 3.1-3.2, Eq. 4-12): chunks, keyword k*, perturbations, weight w.

pub mod bench;
