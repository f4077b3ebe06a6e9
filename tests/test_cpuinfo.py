"""render.cpuinfo: the CPU's name and flags, as the path tracer's meta, the benches and the fused
triangle test's platform check read them."""

import platform

from render.cpuinfo import cpu_flags, cpu_model, cpuinfo_field

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Test CPU 9000 @ 2.10GHz
flags\t\t: fpu sse2 fma avx2 avx512f
model\t\t: 207

processor\t: 1
model name\t: Test CPU 9000 @ 2.10GHz
flags\t\t: fpu sse2 fma avx2 avx512f
"""


def test_fields_of_a_cpuinfo_file(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    assert cpu_model(str(path)) == "Test CPU 9000 @ 2.10GHz"
    assert cpu_flags(str(path)) == {"fpu", "sse2", "fma", "avx2", "avx512f"}
    assert cpuinfo_field("model", str(path)) == "207"  # the key whole, not "model name"'s prefix
    assert cpuinfo_field("cache size", str(path)) is None


def test_without_a_cpuinfo_file(tmp_path):
    missing = str(tmp_path / "none")
    assert cpu_model(missing) == (platform.processor() or platform.machine())
    assert cpu_flags(missing) == set()
