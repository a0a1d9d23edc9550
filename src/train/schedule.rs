//! Learning-rate schedules with linear warm-up, as Hugging Face
//! `transformers.optimization` defines them (the learning rate of optimiser
//! step `s`, counted from 0, is `peak · λ(s)`; so with a warm-up the first step
//! uses a learning rate of 0, exactly like HF `Trainer`).

use super::config::{OptimConfig, ScheduleKind};

/// A schedule over a known number of optimiser steps.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub peak: f64,
    pub kind: ScheduleKind,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl Schedule {
    /// The schedule of `cfg` over `total_steps`; warm-up = ⌈ratio · total⌉ (HF `get_warmup_steps`).
    pub fn new(cfg: &OptimConfig, total_steps: usize) -> Self {
        let warmup_steps = (cfg.warmup_ratio * total_steps as f64).ceil() as usize;
        Self {
            peak: cfg.learning_rate,
            kind: cfg.schedule,
            warmup_steps,
            total_steps,
        }
    }

    /// The multiplier λ(step).
    pub fn factor(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return step as f64 / self.warmup_steps.max(1) as f64;
        }
        let after = (step - self.warmup_steps) as f64;
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => ((span - after) / span).max(0.0),
            ScheduleKind::Cosine => {
                let progress = after / span;
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        }
    }

    /// The learning rate of optimiser step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        self.peak * self.factor(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: ScheduleKind, ratio: f64, total: usize) -> Schedule {
        Schedule::new(
            &OptimConfig {
                learning_rate: 1e-3,
                schedule: kind,
                warmup_ratio: ratio,
                ..OptimConfig::default()
            },
            total,
        )
    }

    #[test]
    fn cosine_with_warmup_matches_the_hf_formula() {
        // 10 steps, warm-up ⌈0.25·10⌉ = 3: λ = 0, 1/3, 2/3, then
        // 0.5(1 + cos(π (s − 3)/7)).
        let s = sched(ScheduleKind::Cosine, 0.25, 10);
        assert_eq!(s.warmup_steps, 3);
        let want = [
            0.0,
            1.0 / 3.0,
            2.0 / 3.0,
            1.0,
            0.950_484_433_951_209_9,
            0.811_744_900_929_367_7,
            0.611_260_466_978_157_3,
            0.388_739_533_021_842_7,
            0.188_255_099_070_632_3,
            0.049_515_566_048_790_1,
        ];
        for (i, w) in want.iter().enumerate() {
            assert!(
                (s.factor(i) - w).abs() < 1e-12,
                "step {i}: {} vs {w}",
                s.factor(i)
            );
            assert!((s.lr(i) - 1e-3 * w).abs() < 1e-15);
        }
        assert_eq!(s.factor(10), 0.0);
    }

    #[test]
    fn linear_constant_and_no_warmup() {
        let s = sched(ScheduleKind::Linear, 0.0, 4);
        assert_eq!(s.warmup_steps, 0);
        let f: Vec<f64> = (0..5).map(|i| s.factor(i)).collect();
        assert_eq!(f, vec![1.0, 0.75, 0.5, 0.25, 0.0]);
        let c = sched(ScheduleKind::Constant, 0.5, 4);
        let f: Vec<f64> = (0..4).map(|i| c.factor(i)).collect();
        assert_eq!(f, vec![0.0, 0.5, 1.0, 1.0]);
        // Cosine without warm-up starts at the peak.
        assert_eq!(sched(ScheduleKind::Cosine, 0.0, 7).factor(0), 1.0);
    }
}
