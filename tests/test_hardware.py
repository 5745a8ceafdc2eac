"""Tests for llm_lab.hardware: the one GPU catalog (dense peaks, sources, SMs), the device-name lookup on real
`torch.cuda.get_device_name()` strings, the plot and CLI, and that no other module keeps its own table of peaks."""
import json, re
from pathlib import Path

import pytest

from llm_lab.core import main
from llm_lab.hardware import HARDWARE, HardwareSpec, get_gpu, gpu_for_device_name, gpus_cli, plot_catalog

PKG = Path(__file__).resolve().parents[1] / 'llm_lab'

# ------------------------------------------------------------------ catalog values (dense, from the datasheets)

DENSE_BF16 = {  # key: dense bf16 (fp16 where the card has no bf16) TFLOP/s, fp32 accumulate, from the vendor's sheet
    'h100-sxm': 989.4, 'h100-pcie': 756, 'h100-nvl': 835.5, 'h200': 989.4, 'a100-40gb': 312, 'a100-80gb': 312,
    'a100-pcie-40gb': 312, 'a100-pcie-80gb': 312, 'l4': 121, 'l40': 181.05, 'l40s': 362.05, 'a10': 125,
    'rtx-3090': 71, 'rtx-4090': 165.2, 'mi300x': 1307.4}
FP16_ONLY = {'t4': 65, 'v100-32gb': 125, 'v100-16gb': 125, 'v100-pcie-16gb': 112, 'v100-pcie-32gb': 112}
SMS = {'h100-sxm': 132, 'h100-pcie': 114, 'h200': 132, 'a100-80gb': 108, 'a100-40gb': 108, 'l4': 58, 'l40': 142, 'l40s': 142,
       'a10': 72, 'rtx-3090': 82, 'rtx-4090': 128, 't4': 40, 'v100-32gb': 80, 'mi300x': 304}
BANDWIDTH = {'h100-sxm': 3350, 'h100-pcie': 2000, 'h200': 4800, 'a100-80gb': 2039, 'a100-40gb': 1555, 'rtx-4090': 1008,
             't4': 320, 'l4': 300, 'l40s': 864, 'rtx-3090': 936, 'a10': 600, 'v100-32gb': 900}


@pytest.mark.parametrize('key,tf', DENSE_BF16.items())
def test_dense_bf16_peaks(key, tf):
    assert get_gpu(key).peak_flops('bf16') == pytest.approx(tf * 1e12, rel=1e-9)


@pytest.mark.parametrize('key,tf', FP16_ONLY.items())
def test_cards_without_bf16_say_so(key, tf):
    hw = get_gpu(key)
    assert hw.peak_flops('fp16') == pytest.approx(tf * 1e12)
    with pytest.raises(ValueError, match=r"no 'bf16' peak.*fp16"):
        hw.peak_flops('bf16')


def test_sms_and_bandwidth():
    for k, n in SMS.items(): assert get_gpu(k).sms == n, k
    for k, bw in BANDWIDTH.items(): assert get_gpu(k).bandwidth_gbs == bw, k
    assert get_gpu('tpu-v4').sms is None
    assert get_gpu('a100-80gb').memory_bytes == 80e9 and get_gpu('h200').memory_bytes == 141e9


def test_variants_differ_where_the_datasheets_do():
    # the three bugs of the old tables: H100 PCIe given the SXM figure, the L40 given the L4's, the 3090's fp16-accumulate figure
    assert get_gpu('h100-pcie').peak_flops() < 0.8 * get_gpu('h100-sxm').peak_flops()
    assert get_gpu('l40').peak_flops() != get_gpu('l4').peak_flops() != get_gpu('l40s').peak_flops()
    assert get_gpu('rtx-3090').tflops['fp16'] == 71 and '142' in get_gpu('rtx-3090').source  # the fp16-accumulate one, named as not used


def test_every_entry_is_complete_and_sourced():
    assert len(HARDWARE) >= 20
    for k, h in HARDWARE.items():
        assert isinstance(h, HardwareSpec) and h.key == k
        assert h.tflops and all(isinstance(v, (int, float)) and v > 0 for v in h.tflops.values()), k
        assert set(h.tflops) <= {'fp32', 'tf32', 'bf16', 'fp16', 'fp8', 'int8'}, k
        assert h.memory_gb > 0 and h.bandwidth_gbs > 0, k
        assert len(h.source) > 20 and h.price_source, k
        assert h.price_per_hour is None or h.price_per_hour > 0, k
        assert h.sms is None or (isinstance(h.sms, int) and h.sms > 0), k
        # tensor peaks are ordered: fp8 >= bf16 >= tf32 >= ... wherever present (a sparse/dense mix-up breaks this)
        t = h.tflops
        if 'bf16' in t and 'tf32' in t: assert t['bf16'] >= t['tf32'], k
        if 'fp8' in t and 'bf16' in t: assert t['fp8'] >= t['bf16'], k


def test_get_gpu_forgiving_and_clear():
    assert get_gpu('H100_SXM') is HARDWARE['h100-sxm'] and get_gpu(HARDWARE['l4']) is HARDWARE['l4']
    with pytest.raises(ValueError, match='did you mean'):
        get_gpu('h100sxm')
    with pytest.raises(TypeError):
        get_gpu(100)

# ------------------------------------------------------------------ device names, as torch.cuda.get_device_name() prints them

DEVICE_NAMES = [
    ('NVIDIA H100 80GB HBM3', 'h100-sxm'), ('NVIDIA H100 PCIe', 'h100-pcie'), ('NVIDIA H100 NVL', 'h100-nvl'),
    ('NVIDIA H200', 'h200'), ('NVIDIA B200', 'b200'),
    ('NVIDIA A100-SXM4-80GB', 'a100-80gb'), ('NVIDIA A100-SXM4-40GB', 'a100-40gb'), ('NVIDIA A100-SXM-80GB', 'a100-80gb'),
    ('NVIDIA A100-PCIE-40GB', 'a100-pcie-40gb'), ('NVIDIA A100 80GB PCIe', 'a100-pcie-80gb'),
    ('NVIDIA A10', 'a10'), ('NVIDIA L4', 'l4'), ('NVIDIA L40', 'l40'), ('NVIDIA L40S', 'l40s'),
    ('NVIDIA GeForce RTX 4090', 'rtx-4090'), ('NVIDIA GeForce RTX 3090', 'rtx-3090'),
    ('Tesla T4', 't4'), ('Tesla V100-SXM2-16GB', 'v100-16gb'), ('Tesla V100-SXM2-32GB', 'v100-32gb'),
    ('Tesla V100-PCIE-16GB', 'v100-pcie-16gb'), ('Tesla V100-PCIE-32GB', 'v100-pcie-32gb'),
    ('AMD Instinct MI300X', 'mi300x'), ('  nvidia  l40s ', 'l40s'),
    # not in the catalog (or only a fraction of a card): None, never a wrong neighbour
    ('NVIDIA GH200 480GB', None), ('NVIDIA H200 NVL', None), ('NVIDIA H20', None), ('NVIDIA H800', None),
    ('NVIDIA A10G', None), ('NVIDIA A40', None), ('NVIDIA A800-SXM4-80GB', None), ('NVIDIA L20', None),
    ('NVIDIA GeForce RTX 3090 Ti', None), ('NVIDIA GeForce RTX 4090 D', None), ('NVIDIA GeForce RTX 4090 Laptop GPU', None),
    ('Tesla V100S-PCIE-32GB', None), ('NVIDIA A100-SXM4-40GB MIG 3g.20gb', None), ('NVIDIA H100 80GB HBM3 MIG 1g.10gb', None),
    ('Quadro P1000', None), ('NVIDIA RTX A6000', None), ('', None),
]


@pytest.mark.parametrize('name,key', DEVICE_NAMES)
def test_gpu_for_device_name(name, key):
    hw = gpu_for_device_name(name)
    assert (hw.key if hw else None) == key


def test_gpu_for_device_name_bad_input():
    with pytest.raises(TypeError, match='name'):
        gpu_for_device_name(None)


def test_every_pattern_reaches_a_catalog_entry():
    from llm_lab.hardware import _DEVICE_PATTERNS
    assert all(key in HARDWARE for _, key in _DEVICE_PATTERNS)
    reached = {key for name, key in DEVICE_NAMES if key}
    assert reached == {key for _, key in _DEVICE_PATTERNS}  # every pattern is exercised by a real name above

# ------------------------------------------------------------------ plot and CLI


def test_plot_catalog():
    ax = plot_catalog()
    assert len(ax.collections) == sum('bf16' in h.tflops for h in HARDWARE.values())
    plot_catalog('fp8')
    with pytest.raises(ValueError, match="'fp4'"):
        plot_catalog('fp4')


def test_gpus_cli(capsys):
    assert gpus_cli([]) == 0
    out = capsys.readouterr().out
    assert 'h100-pcie' in out and '756' in out and 'l40s' in out
    assert main(['gpus', '--json']) == 0
    d = json.loads(capsys.readouterr().out)
    assert d['h100-sxm']['tflops']['bf16'] == 989.4 and d['t4']['sms'] == 40
    assert gpus_cli(['--sources']) == 0 and 'datasheet' in capsys.readouterr().out

# ------------------------------------------------------------------ one catalog: nobody else keeps a table of peaks

_PEAK = re.compile(r'\b(?:989(?:\.4)?|756|312|362(?:\.05)?|181(?:\.05)?|165(?:\.2)?|125|121|71|65|835(?:\.5)?|1979|1513)e12\b')
_GPU_KEYED = re.compile(r"""['"](?:NVIDIA |Tesla |GeForce )?(?:[HABV]\d{2,3}|L4\d?S?|T4|A10G?|RTX ?\d{4})\b[^'"]*['"]\s*:\s*\(?\s*\d""")


def _offenders():
    out = []
    for p in sorted(PKG.rglob('*.py')):
        if p.name in ('hardware.py', '_modidx.py'): continue
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if _PEAK.search(line) or _GPU_KEYED.search(line): out.append(f'{p.relative_to(PKG)}:{i}: {line.strip()[:100]}')
    return out


def test_the_detector_detects():
    # the patterns that the test below relies on catch the tables it was written against
    assert _PEAK.search("PEAK_FLOPS = {'H200': 989e12, 'H100': 989e12}") and _PEAK.search("(312e12, 2.04e12, 108)")
    assert _GPU_KEYED.search("    'H100 SXM': (989e12, 3.35e12, 132),") and _GPU_KEYED.search("{'RTX 3090': 71e12}")
    assert not _PEAK.search("tokens = 1.4e12") and not _GPU_KEYED.search("'h100-sxm': get_gpu('h100-sxm')")


def test_no_other_module_defines_a_peak_table():
    assert _offenders() == []
