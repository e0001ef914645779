"""Fits L(N, D) = E + A / N^alpha + B / D^beta to final held-out losses, as Hoffmann et al. 2022
(approach 3): minimise the Huber loss (delta 1e-3) of the log-space residual
log L_hat - log L, with L_hat = exp(LSE(a - alpha log N, b - beta log D, e)), by L-BFGS from a grid
of starting points, keeping the best. Also draws the fit against the measured points."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

jax.config.update("jax_enable_x64", True)  # the fit is tiny; float64 keeps L-BFGS well behaved

# Published fits, for the comparison table.
HOFFMANN = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
KAPLAN = {"alpha_N": 0.076, "alpha_D": 0.095}  # L(N) = (N_c/N)^alpha_N, L(D) = (D_c/D)^alpha_D


def _objective(theta, log_n, log_d, log_loss, delta=1e-3):
    a, b, e, alpha, beta = theta
    predicted = jax.nn.logsumexp(jnp.stack([a - alpha * log_n, b - beta * log_d,
                                            jnp.full_like(log_n, e)]), axis=0)
    return jnp.sum(optax.losses.huber_loss(predicted, log_loss, delta=delta))


def fit(n: np.ndarray, d: np.ndarray, loss: np.ndarray, steps: int = 300) -> dict:
    """{"E", "A", "B", "alpha", "beta", "objective"} of the best of the grid's L-BFGS runs."""
    args = tuple(jnp.log(jnp.asarray(x, jnp.float64)) for x in (n, d, loss))
    solver = optax.lbfgs()

    def objective(theta):
        return _objective(theta, *args)

    def run(theta):
        value_and_grad = optax.value_and_grad_from_state(objective)

        def step(_, carry):
            theta, state = carry
            value, grad = value_and_grad(theta, state=state)
            updates, state = solver.update(grad, state, theta, value=value, grad=grad,
                                           value_fn=objective)
            return optax.apply_updates(theta, updates), state
        theta, _ = jax.lax.fori_loop(0, steps, step, (theta, solver.init(theta)))
        return theta, objective(theta)

    # Hoffmann's grid of initialisations (coarser: there are only 15 points here), all at once.
    starts = jnp.asarray(list(itertools.product((0, 5, 10, 15), (0, 5, 10, 15), (-1, 0, 1),
                                                (0.1, 0.4, 0.8), (0.1, 0.4, 0.8))), jnp.float64)
    thetas, values = jax.jit(jax.vmap(run))(starts)
    values = np.where(np.isfinite(values), values, np.inf)
    best = int(np.argmin(values))
    a, b, e, alpha, beta = np.asarray(thetas[best])
    return {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": float(alpha),
            "beta": float(beta), "objective": float(values[best])}


def predict(law: dict, n, d):
    return law["E"] + law["A"] / np.asarray(n, float) ** law["alpha"] + \
        law["B"] / np.asarray(d, float) ** law["beta"]


def plot(path: str, n: np.ndarray, d: np.ndarray, loss: np.ndarray, law: dict) -> None:
    """Left: loss against tokens, one colour per model size, fitted curves through them.
    Right: loss against model size, one colour per token budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    cmap = plt.get_cmap("viridis")
    for ax, x, group, xlabel, name in ((left, d, n, "tokens D", "N"),
                                       (right, n, d, "non-embedding params N", "D")):
        values = sorted(set(group.tolist()))
        for i, g in enumerate(values):
            color = cmap(i / max(len(values) - 1, 1))
            mask = group == g
            ax.plot(x[mask], loss[mask], "o", color=color, label=f"{name} = {g:,.0f}")
            grid = np.geomspace(x.min() / 1.3, x.max() * 1.3, 50)
            fitted = predict(law, g, grid) if name == "N" else predict(law, grid, g)
            ax.plot(grid, fitted, "-", color=color, alpha=0.7)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("final held-out loss (nats/token)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(f"L(N, D) = {law['E']:.2f} + {law['A']:.3g} / N^{law['alpha']:.2f} + "
                 f"{law['B']:.3g} / D^{law['beta']:.2f}  (points: measured; lines: fit)",
                 fontsize=10)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
