//! Sparse gradients: SparseAdam leaves the absent rows alone, equals its dense form where every
//! row is present, and optimizers without sparse support refuse sparse gradients.

use descent_core::sparse::{row_layout, SparseRows};
use descent_core::spec::build_optimizer;
use descent_core::Optimizer;
use serde_json::json;

fn optimizer(lib: &str, name: &str, h: serde_json::Value, groups: Option<serde_json::Value>) -> Optimizer {
    let shapes = vec![vec![4, 3], vec![5]];
    let tx = build_optimizer(lib, name, &h, groups.as_ref(), &shapes).unwrap();
    let init = init();
    let views: Vec<&[f32]> = init.iter().map(|p| p.as_slice()).collect();
    Optimizer::new(tx, shapes, &views).unwrap()
}

fn init() -> Vec<Vec<f32>> {
    vec![(0..12).map(|i| (i as f32 * 0.37).sin()).collect(), (0..5).map(|i| (i as f32 * 0.71).cos()).collect()]
}

/// Gradients whose rows `absent[t]` of the matrix, and elements of the vector, are zero at step t.
fn grads(t: usize) -> Vec<Vec<f32>> {
    let mut m: Vec<f32> = (0..12).map(|i| ((i + 3 * t) as f32 * 0.53).sin() + 1.5).collect();
    let mut v: Vec<f32> = (0..5).map(|i| ((i * 7 + t) as f32 * 0.29).cos() + 1.5).collect();
    let row = t % 4;
    m[row * 3..row * 3 + 3].fill(0.0);
    v[(t + 1) % 5] = 0.0;
    vec![m, v]
}

fn rows(shapes: &[Vec<usize>], g: &[Vec<f32>]) -> SparseRows {
    let views: Vec<&[f32]> = g.iter().map(|v| v.as_slice()).collect();
    SparseRows::nonzero_rows(shapes, &views).unwrap()
}

#[test]
fn absent_rows_keep_their_parameters_and_moments() {
    let mut opt = optimizer("torch", "sparseadam", json!({"lr": 0.01}), None);
    let shapes = opt.shapes().to_vec();
    let mut params = init();
    for t in 0..6 {
        let g = grads(t);
        let before = params.clone();
        let state_before = opt.state_dict().unwrap();
        let r = rows(&shapes, &g);
        opt.step_sparse_vecs(&mut params, &g, &r).unwrap();
        let state_after = opt.state_dict().unwrap();
        for (i, s) in shapes.iter().enumerate() {
            let (_, len) = row_layout(s);
            for (row, &present) in r.rows(i).iter().enumerate() {
                let span = row * len..(row + 1) * len;
                let moved = params[i][span.clone()] != before[i][span.clone()];
                assert_eq!(moved, present, "step {t}, tensor {i}, row {row}");
                for name in ["exp_avg", "exp_avg_sq"] {
                    let key = format!("{name}.{i}");
                    let (a, b) = (&state_before.buffers[&key][span.clone()], &state_after.buffers[&key][span.clone()]);
                    assert_eq!(a != b, present, "step {t}, {key}, row {row}");
                }
            }
        }
    }
    assert_eq!(opt.steps(), 6);
}

#[test]
fn a_dense_step_is_a_sparse_step_with_every_row_present() {
    let h = json!({"lr": 0.02, "betas": [0.8, 0.99], "eps": 1e-6});
    let (mut a, mut b) = (optimizer("torch", "sparseadam", h.clone(), None), optimizer("torch", "sparseadam", h, None));
    let shapes = a.shapes().to_vec();
    let (mut pa, mut pb) = (init(), init());
    for t in 0..4 {
        let g = grads(t);
        a.step_vecs(&mut pa, &g).unwrap();
        b.step_sparse_vecs(&mut pb, &g, &SparseRows::all(&shapes)).unwrap();
    }
    for (x, y) in pa.iter().flatten().zip(pb.iter().flatten()) {
        assert_eq!(x.to_bits(), y.to_bits());
    }
}

#[test]
fn param_groups_take_sparse_gradients_group_by_group() {
    let groups = json!([{"params": [0], "hparams": {"lr": 0.05}}, {"params": [1]}]);
    let mut grouped = optimizer("torch", "sparseadam", json!({"lr": 0.01}), Some(groups));
    let mut alone = [0.05, 0.01].map(|lr| optimizer("torch", "sparseadam", json!({"lr": lr}), None));
    let shapes = grouped.shapes().to_vec();
    let mut p = init();
    let mut q = [init(), init()];
    for t in 0..3 {
        let g = grads(t);
        grouped.step_sparse_vecs(&mut p, &g, &rows(&shapes, &g)).unwrap();
        for o in alone.iter_mut().zip(q.iter_mut()) {
            o.0.step_sparse_vecs(o.1, &g, &rows(&shapes, &g)).unwrap();
        }
    }
    assert_eq!(p[0], q[0][0]);
    assert_eq!(p[1], q[1][1]);
}

#[test]
fn optimizers_without_sparse_support_refuse_sparse_gradients_untouched() {
    for (lib, name, h) in [("torch", "adam", json!({"lr": 0.01})), ("optax", "adam", json!({"learning_rate": 0.01}))] {
        let mut opt = optimizer(lib, name, h, None);
        let shapes = opt.shapes().to_vec();
        let mut params = init();
        let g = grads(0);
        let e = opt.step_sparse_vecs(&mut params, &g, &rows(&shapes, &g)).unwrap_err().to_string();
        assert!(e.contains("sparse"), "{lib}.{name}: {e}");
        assert_eq!(params, init());
        assert_eq!(opt.steps(), 0);
    }
}

#[test]
fn row_masks_must_fit_the_shapes() {
    let shapes = vec![vec![4, 3], vec![5]];
    assert!(SparseRows::new(&shapes, vec![vec![true; 4], vec![true; 5]]).is_ok());
    assert!(SparseRows::new(&shapes, vec![vec![true; 3], vec![true; 5]]).is_err());
    assert!(SparseRows::new(&shapes, vec![vec![true; 4]]).is_err());
    // A scalar is one row; a tensor with no elements has none, however long its first axis.
    assert_eq!(row_layout(&[]), (1, 1));
    assert_eq!(row_layout(&[1 << 40, 0]), (0, 0));
    let mut opt = optimizer("torch", "sparseadam", json!({}), None);
    let mut params = init();
    let e = opt.step_sparse_vecs(&mut params, &grads(0), &SparseRows::all(&[vec![12], vec![5]])).unwrap_err();
    assert!(e.to_string().contains("rows"), "{e}");
}

/// torch steps only the parameters its groups name: one left out keeps every bit (a `−0` entry
/// included), with dense gradients through the fused step and with sparse ones; the one named is
/// stepped as by an optimizer of its group's arguments alone.
#[test]
fn a_parameter_in_no_group_is_never_stepped() {
    let groups = json!([{"params": [0], "hparams": {"lr": 0.05}}]);
    for (name, sparse) in [("sgd", false), ("adam", false), ("sparseadam", true)] {
        let h = |lr: f64| if name == "sgd" { json!({"lr": lr, "momentum": 0.9}) } else { json!({"lr": lr}) };
        let mut grouped = optimizer("torch", name, h(0.01), Some(groups.clone()));
        let mut alone = optimizer("torch", name, h(0.05), None);
        let shapes = grouped.shapes().to_vec();
        let mut p = init();
        p[1][2] = -0.0;
        let left_out = p[1].clone();
        let mut q = p.clone();
        for t in 0..3 {
            let g = grads(t);
            if sparse {
                grouped.step_sparse_vecs(&mut p, &g, &rows(&shapes, &g)).unwrap();
                alone.step_sparse_vecs(&mut q, &g, &rows(&shapes, &g)).unwrap();
            } else {
                grouped.step_vecs(&mut p, &g).unwrap();
                alone.step_vecs(&mut q, &g).unwrap();
            }
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&p[1]), bits(&left_out), "torch.{name}: the parameter in no group moved");
        assert_eq!(bits(&p[0]), bits(&q[0]), "torch.{name}: the grouped parameter");
        assert_ne!(p[0], init()[0], "torch.{name}: the grouped parameter did not move");
    }
    // pytorch_optimizer's Lookahead syncs only its inner optimizer's groups (k = 1: every step).
    for inner in [json!(["torch.optim.SGD", {"lr": 0.05, "momentum": 0.9}]), json!(["adan", {"lr": 0.05}])] {
        let h = json!({"optimizer": inner, "k": 1, "alpha": 0.5});
        let mut opt = optimizer("po", "lookahead", h, Some(groups.clone()));
        let mut p = init();
        p[1][2] = -0.0;
        let left_out = p[1].clone();
        for t in 0..3 {
            opt.step_vecs(&mut p, &grads(t)).unwrap();
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&p[1]), bits(&left_out), "po.lookahead({inner}): the parameter in no group moved");
        assert_ne!(p[0], init()[0], "po.lookahead({inner}): the grouped parameter did not move");
    }
}
