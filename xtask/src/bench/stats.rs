//! Percentiles and medians.

use serde::Serialize;

/// p50 / p99 / max of a sample, in the unit it was given.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub n: usize,
}

impl Percentiles {
    /// None for an empty sample.
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        Some(Self {
            p50: rank(&v, 0.50),
            p99: rank(&v, 0.99),
            max: v[v.len() - 1],
            n: v.len(),
        })
    }
}

/// Nearest-rank percentile of sorted values.
fn rank(sorted: &[f64], q: f64) -> f64 {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "sample counts are far below 2^52"
    )]
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

pub fn median(values: &[f64]) -> Option<f64> {
    Percentiles::of(values).map(|p| p.p50)
}

/// The median of `f` over `items`; None for no items.
pub fn median_by<T>(items: &[T], f: impl Fn(&T) -> f64) -> Option<f64> {
    median(&items.iter().map(f).collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::Percentiles;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&v).expect("non-empty");
        assert!((p.p50 - 50.0).abs() < f64::EPSILON);
        assert!((p.p99 - 99.0).abs() < f64::EPSILON);
        assert!((p.max - 100.0).abs() < f64::EPSILON);
        assert!(Percentiles::of(&[]).is_none());
    }
}
