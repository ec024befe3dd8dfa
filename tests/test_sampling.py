"""sampling/: schedule and step parity with diffusers, the reference grid, and loop invariants."""
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from models.unet import UNet, UNetConfig
from sampling import (
    BETA_END,
    BETA_START,
    Grid,
    consistent_grid,
    ddim_step,
    denoise,
    invert,
    linspace_timesteps,
    reference_grid,
    scaled_linear_alphas_cumprod,
)

AC = scaled_linear_alphas_cumprod()
SD_SCHEDULE = dict(beta_schedule="scaled_linear", beta_start=BETA_START, beta_end=BETA_END, num_train_timesteps=1000)


def ddim_scheduler(prediction_type="epsilon"):
    # SD's scheduler config: no x0 clipping
    return DDIMScheduler(**SD_SCHEDULE, clip_sample=False, prediction_type=prediction_type)


@pytest.fixture(scope="module")
def unet_model():
    """A tiny random UNet as model(x, t, i), output rescaled to unit std so steps are not near-identities."""
    torch.manual_seed(0)
    unet = UNet(UNetConfig.tiny()).eval()
    context = torch.randn(1, 8, unet.cfg.context_dim)
    probe = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        unet.conv_out.weight /= unet(probe, 500, context).std()
        unet.conv_out.bias.zero_()
    return lambda x, t, i: unet(x, t, context)


def latent(seed=1, size=16):
    return torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(seed))


def max_err(a, b):
    return (a - b).abs().max().item()


def rms_err(a, b):
    return (a - b).pow(2).mean().sqrt().item()


def test_alphas_cumprod_match_diffusers():
    assert AC.dtype == torch.float64
    assert max_err(AC, ddim_scheduler().alphas_cumprod.double()) < 1e-6


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("t", [999, 549, 100, 50])
def test_ddim_step_matches_diffusers(t, eta, prediction_type):
    scheduler = ddim_scheduler(prediction_type)
    scheduler.set_timesteps(20)  # the step goes t -> t - 1000 // 20, as the reference's
    x, pred, noise = latent(1), latent(2), latent(3)
    ours = ddim_step(x, pred, float(AC[t]), float(AC[t - 50]), eta, noise if eta else None, prediction_type)
    # diffusers as is: its float32 ᾱ (1 - ᾱ has few digits near t = 0) and float32 maths cost ~2e-6
    expected = scheduler.step(pred, t, x, eta=eta, variance_noise=noise).prev_sample
    assert max_err(ours, expected) < 5e-6
    # the same step maths: diffusers given our float64 ᾱ and float64 latents
    scheduler.alphas_cumprod = AC
    expected = scheduler.step(pred.double(), t, x.double(), eta=eta, variance_noise=noise.double()).prev_sample
    ours = ddim_step(x.double(), pred.double(), float(AC[t]), float(AC[t - 50]), eta,
                     noise.double() if eta else None, prediction_type)
    assert max_err(ours, expected) < 1e-6


def test_loops_keep_the_latent_dtype():
    model = lambda x, t, i: 0.5 * x  # noqa: E731
    grid, gen = reference_grid(), torch.Generator().manual_seed(0)
    inv = invert(model, latent().half(), grid, AC, generator=gen, disable=True)
    den = denoise(model, inv.latents[-1], grid, AC, eta=1.0, noises=inv.noises[::-1], disable=True)
    assert {x.dtype for x in inv.latents + inv.noises + den.latents} == {torch.float16}


def test_stochastic_step_without_noise_is_an_error():
    with pytest.raises(ValueError, match="noise"):
        ddim_step(latent(), latent(2), float(AC[549]), float(AC[499]), eta=1.0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' np.array(tensor) under numpy 2
@pytest.mark.parametrize("steps", [1, 7, 10, 20, 25, 50, 64, 100])
def test_linspace_grid_matches_dpm_solver(steps):
    scheduler = DPMSolverMultistepScheduler(**SD_SCHEDULE)
    scheduler.set_timesteps(steps)
    assert linspace_timesteps(steps) == scheduler.timesteps.tolist()


def test_reference_grid_at_paper_settings():
    # From RegionDrag's region_utils/drag.py + cycle_sde.py (diffusers 0.30.1 DPM-Solver, stride 1000 // 20):
    # inversion steps t -> t + 50 from timesteps[10:] flipped; denoising t -> t - 50 over timesteps[9:-1].
    grid = reference_grid(20, 0.5)
    assert linspace_timesteps(20) == [999, 949, 899, 849, 799, 749, 699, 649, 599, 549,
                                      500, 450, 400, 350, 300, 250, 200, 150, 100, 50]
    assert grid.inversion == tuple((t, t + 50) for t in range(50, 501, 50))
    assert grid.denoising == ((549, 499),) + tuple((t, t - 50) for t in range(500, 99, -50))
    assert reference_grid() == grid


@pytest.mark.parametrize("steps, start_t", [(20, 0.5), (20, 0.95), (10, 0.3), (7, 0.6), (50, 0.5)])
def test_consistent_grid_retraces_the_inversion(steps, start_t):
    ref, con = reference_grid(steps, start_t), consistent_grid(steps, start_t)
    n = int(start_t * steps)
    assert len(ref.inversion) == len(ref.denoising) == n
    assert con.inversion == ref.inversion
    assert [(b, a) for a, b in reversed(con.denoising)] == list(con.inversion)
    assert [t for t, _ in ref.denoising] == linspace_timesteps(steps)[steps - n - 1 : -1]


@pytest.mark.parametrize("start_t", [0.0, 1.0])
def test_grid_needs_between_one_and_steps_minus_one_inversion_steps(start_t):
    with pytest.raises(ValueError, match="start_t"):
        reference_grid(20, start_t)


def test_loops_visit_the_reference_order(capsys):
    """SDE inversion calls the model at the upper timestep, DDIM inversion at the lower one,
    denoising at 549, 500, …, 100; step indices count from 0 in each loop."""
    calls, hooks = [], []

    def model(x, t, i):
        calls.append((t, i))
        return 0.1 * x

    def before_step(j, t, x):
        hooks.append((j, t))
        return x

    grid, gen = reference_grid(), torch.Generator().manual_seed(0)
    sde = invert(model, latent(), grid, AC, generator=gen, disable=True)
    assert calls == [(t, i) for i, t in enumerate(range(100, 551, 50))]
    assert len(sde.latents) == 11 and len(sde.noises) == 10
    calls.clear()
    ode = invert(model, latent(), grid, AC, sde=False, disable=True)
    assert calls == [(t, i) for i, t in enumerate(range(50, 501, 50))] and ode.noises == []
    calls.clear()
    den = denoise(model, sde.latents[-1], grid, AC, eta=1.0, noises=sde.noises[::-1], before_step=before_step,
                  disable=True)
    assert calls == [(t, j) for j, t in hooks] == [(549, 0)] + [(t, j) for j, t in enumerate(range(500, 99, -50), 1)]
    assert len(den.latents) == 11 and all(a is b for a, b in zip(den.noises, sde.noises[::-1]))
    assert capsys.readouterr().err == ""
    invert(model, latent(), grid, AC, sde=False)
    assert "inversion" in capsys.readouterr().err


def test_before_step_result_is_what_the_model_sees():
    seen = []
    model = lambda x, t, i: seen.append(x) or torch.zeros_like(x)  # noqa: E731
    denoise(model, latent(), reference_grid(), AC, before_step=lambda j, t, x: x * 0 + j, disable=True)
    assert [x.unique().tolist() for x in seen] == [[j] for j in range(10)]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_cycle_sde_reconstructs_on_the_consistent_grid(unet_model, prediction_type):
    x0, grid = latent(), consistent_grid()
    inv = invert(unet_model, x0, grid, AC, generator=torch.Generator().manual_seed(0),
                 prediction_type=prediction_type, disable=True)
    den = denoise(unet_model, inv.latents[-1], grid, AC, eta=1.0, noises=inv.noises[::-1],
                  prediction_type=prediction_type, disable=True)
    # every intermediate latent is retraced, not only the last
    for x_den, x_inv in zip(den.latents, reversed(inv.latents)):
        assert max_err(x_den, x_inv) < 1e-4
    # fresh noise instead of the stored one lands far away: the stored noises are what reconstructs
    fresh = denoise(unet_model, inv.latents[-1], grid, AC, eta=1.0, generator=torch.Generator().manual_seed(1),
                    prediction_type=prediction_type, disable=True)
    assert max_err(fresh.latents[-1], x0) > 0.1


def test_cycle_sde_on_the_reference_grid_is_off_by_the_549_550_mismatch(unet_model):
    """The reference denoises x_550 as if it were x_549, with the noise stored for 550 -> 500, lands at
    499 and then treats that as x_500. That first step misses the stored x_500 by ~1e-2 (rms, unit
    latents; the random UNet's ε moves ~0.03 per timestep); later steps are matched but carry the error
    on, and this UNet amplifies it to a few 1e-2. That is the no-op error of the paper's settings:
    far above float rounding (the consistent grid's < 1e-4), far below the latent scale."""
    x0, gen = latent(), torch.Generator().manual_seed(0)
    inv = invert(unet_model, x0, reference_grid(), AC, generator=gen, disable=True)
    den = denoise(unet_model, inv.latents[-1], reference_grid(), AC, eta=1.0, noises=inv.noises[::-1], disable=True)
    first, final = rms_err(den.latents[1], inv.latents[-2]), rms_err(den.latents[-1], x0)
    assert 2e-3 < first < 3e-2, first
    assert first < final < 0.1, final


def ode_roundtrip_error(model, steps):
    x0, grid = latent(), consistent_grid(steps, 0.5)
    inv = invert(model, x0, grid, AC, sde=False, disable=True)
    den = denoise(model, inv.latents[-1], grid, AC, disable=True)
    return rms_err(den.latents[-1], x0)


def test_ddim_inversion_roundtrip_error_is_bounded_and_shrinks_with_steps(unet_model):
    """DDIM inversion steps t -> t' with ε(x_t, t), the denoising back with ε(x_t', t'): a first-order
    mismatch, so the error halves when the steps do. The random UNet's ε changes fast with t (unlike a
    trained one), so the bound is loose: rms < 0.3 of the unit latent for the 10 steps of start_t 0.5."""
    errors = [ode_roundtrip_error(unet_model, steps) for steps in (10, 20, 40)]
    assert errors[1] < 0.3, errors
    assert errors[0] > 1.7 * errors[1] > 1.7**2 * errors[2], errors


def test_same_seed_same_result_different_seed_differs(unet_model):
    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        inv = invert(unet_model, latent(), reference_grid(), AC, generator=gen, disable=True)
        return denoise(unet_model, inv.latents[-1], reference_grid(), AC, eta=1.0, generator=gen, disable=True)

    rng = torch.get_rng_state()
    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(x, y) for x, y in zip(a.latents + a.noises, b.latents + b.noises))
    assert not torch.equal(a.latents[-1], c.latents[-1])
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is never drawn from


def test_stochastic_loops_refuse_the_global_rng():
    model = lambda x, t, i: x  # noqa: E731
    with pytest.raises(ValueError, match="Generator"):
        invert(model, latent(), reference_grid(), AC, disable=True)
    with pytest.raises(ValueError, match="Generator"):
        denoise(model, latent(), reference_grid(), AC, eta=1.0, disable=True)


def test_stored_noises_need_a_stochastic_step_and_one_per_step():
    model = lambda x, t, i: x  # noqa: E731
    noises = [latent()] * 10
    with pytest.raises(ValueError, match="eta"):
        denoise(model, latent(), reference_grid(), AC, noises=noises, disable=True)
    with pytest.raises(ValueError, match="one noise per step"):
        denoise(model, latent(), reference_grid(), AC, eta=1.0, noises=noises[:9], disable=True)


def test_grid_is_plain_data():
    grid = Grid(inversion=((0, 10),), denoising=((10, 0),))
    with pytest.raises(AttributeError):
        grid.inversion = ()
