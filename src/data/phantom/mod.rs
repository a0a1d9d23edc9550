//! The phantom benchmark (DESIGN.md section 3): procedural radiograph-like studies with exact lesion masks.
