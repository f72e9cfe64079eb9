//! Weighted least squares for the step-time fit: at most four coefficients, some held at 0, all
//! constrained non-negative.

use super::COLUMNS;
use crate::error::Error;
use crate::profile::solve;

/// A regression row: regressors (intercept first), observation, weight.
pub(super) struct Row {
    pub(super) kind: &'static str,
    pub(super) x: [f64; 4],
    pub(super) y: f64,
    pub(super) w: f64,
}

/// Weighted least squares with every active coefficient ≥ 0: the most negative one (scaled by its
/// column's spread) is fixed at 0 and the fit repeated.
pub(super) fn nonnegative_fit(
    rows: &[Row],
    active: &mut [bool; 4],
    dropped: &mut Vec<String>,
) -> Result<[f64; 4], Error> {
    loop {
        let c = weighted_ls(rows, active).ok_or_else(|| {
            Error::Calibration(
                "step-time fit: the windows do not determine the coefficients (too little \
                 variation in load)"
                    .into(),
            )
        })?;
        let worst = (1..4)
            .filter(|&j| active[j] && c[j] < 0.0)
            .min_by(|&a, &b| (c[a] * spread(rows, a)).total_cmp(&(c[b] * spread(rows, b))));
        match worst {
            Some(j) => {
                active[j] = false;
                dropped.push(format!("{}: fitted negative, fixed at 0", COLUMNS[j - 1]));
            }
            None => return Ok(c),
        }
    }
}

/// Weighted residual sum of squares of `coef` over `rows`.
pub(super) fn rss(rows: &[Row], coef: &[f64; 4]) -> f64 {
    rows.iter()
        .map(|r| r.w * (r.y - (0..4).map(|j| coef[j] * r.x[j]).sum::<f64>()).powi(2))
        .sum()
}

/// Weighted standard deviation of column `j`.
pub(super) fn spread(rows: &[Row], j: usize) -> f64 {
    let sw: f64 = rows.iter().map(|r| r.w).sum();
    let m = rows.iter().map(|r| r.w * r.x[j]).sum::<f64>() / sw;
    (rows.iter().map(|r| r.w * (r.x[j] - m).powi(2)).sum::<f64>() / sw).sqrt()
}

/// Weighted correlation of columns `a` and `b`.
pub(super) fn correlation(rows: &[Row], a: usize, b: usize) -> f64 {
    let sw: f64 = rows.iter().map(|r| r.w).sum();
    let ma = rows.iter().map(|r| r.w * r.x[a]).sum::<f64>() / sw;
    let mb = rows.iter().map(|r| r.w * r.x[b]).sum::<f64>() / sw;
    let cov = rows
        .iter()
        .map(|r| r.w * (r.x[a] - ma) * (r.x[b] - mb))
        .sum::<f64>()
        / sw;
    cov / (spread(rows, a) * spread(rows, b)).max(f64::MIN_POSITIVE)
}

/// Weighted least squares on the active columns (inactive ones are 0).
fn weighted_ls(rows: &[Row], active: &[bool; 4]) -> Option<[f64; 4]> {
    let (a, scale) = normal_equations(rows, active);
    let c = solve(a)?;
    Some(unscaled(c, &scale))
}

/// Each coefficient's estimate over its standard error, for `coef` fitted by [`nonnegative_fit`]
/// on the `active` columns (0 for an inactive one): the weighted least-squares covariance
/// σ²·(XᵀWX)⁻¹, with σ² the weighted residual sum of squares per degree of freedom (so that it
/// does not depend on the weights' scale). Infinite for a positive coefficient of an exact fit;
/// NaN when the rows leave no degree of freedom.
pub(super) fn t_values(rows: &[Row], active: &[bool; 4], coef: &[f64; 4]) -> [f64; 4] {
    let (a, scale) = normal_equations(rows, active);
    let free = (0..4).filter(|&j| active[j] && scale[j] > 0.0).count();
    let dof = rows.len().saturating_sub(free) as f64;
    let variance = rss(rows, coef) / dof;
    std::array::from_fn(|j| {
        if !(active[j] && scale[j] > 0.0) {
            return 0.0;
        }
        // Column j of the inverse: the system with the unit vector e_j on the right.
        let mut unit = a;
        for (i, row) in unit.iter_mut().enumerate() {
            row[4] = if i == j { 1.0 } else { 0.0 };
        }
        let se = solve(unit).map_or(f64::INFINITY, |x| (variance * x[j]).sqrt() / scale[j]);
        if se > 0.0 {
            coef[j] / se
        } else {
            coef[j] * f64::INFINITY
        }
    })
}

/// The normal equations XᵀWX·c = XᵀWy over the active columns (an inactive one's row and column
/// pin its coefficient at 0), augmented with the right-hand side; columns are scaled to unit
/// maximum so that they stay well conditioned. Returns them with the scales.
fn normal_equations(rows: &[Row], active: &[bool; 4]) -> ([[f64; 5]; 4], [f64; 4]) {
    let mut scale = [0.0f64; 4];
    for r in rows {
        for (s, x) in scale.iter_mut().zip(r.x) {
            *s = s.max(x.abs());
        }
    }
    let on = |j: usize| active[j] && scale[j] > 0.0;
    let mut a = [[0.0f64; 5]; 4];
    for r in rows {
        let x: [f64; 4] = std::array::from_fn(|j| if on(j) { r.x[j] / scale[j] } else { 0.0 });
        for i in 0..4 {
            for j in 0..4 {
                a[i][j] += r.w * x[i] * x[j];
            }
            a[i][4] += r.w * x[i] * r.y;
        }
    }
    for (j, row) in a.iter_mut().enumerate() {
        if !on(j) {
            *row = [0.0; 5];
            row[j] = 1.0;
        }
    }
    (a, scale)
}

/// Coefficients of scaled columns back in the columns' own units (0 for an all-zero column).
fn unscaled(c: [f64; 4], scale: &[f64; 4]) -> [f64; 4] {
    std::array::from_fn(|j| if scale[j] > 0.0 { c[j] / scale[j] } else { 0.0 })
}
