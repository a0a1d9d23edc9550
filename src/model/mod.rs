//! The LLaVA model: CLIP vision tower, projector, Llama/Mistral decoder, LoRA, templates.
