; The packet kernel's triangle test with fused multiply-adds (render/pt_packets.py, tri_hit).
;
; Taichi 1.7.4's CPU JIT never fuses a multiply and an add (its IR carries no contraction flag), and
; its Python frontend has no fma. Taichi links an LLVM bitcode module into a kernel and inlines its
; functions (ti.lang.source_builder.SourceBuilder), so this one function, called once per SIMD lane,
; brings llvm.fma into the kernel; LLVM's SLP vectoriser packs the eight inlined copies again.
;
; Source of render/fused.bc. After a change, rebuild it with an llvm-as no newer than Taichi's LLVM
; (15; Debian's llvm-14 package is what made the committed file):
;     llvm-as render/fused.ll -o render/fused.bc
; tests/test_pathtracer.py checks that the two agree. (Taichi's offline cache knows bitcode by its
; path, not its content, so kernels link a copy named by the content's hash: see
; render/pt_packets.py, _cached_bitcode.) Arguments are pointers, as Taichi passes local variables to
; bitcode functions.
; The data layout is x86-64 Linux's (Taichi's kernels carry the host's, and linking modules of
; different layouts prints a warning), so render/pt_packets.py links it there only.

target datalayout = "e-m:e-p270:32:32-p271:32:32-p272:64:64-i64:64-f80:128-n8:16:32:64-S128"

; Moller-Trumbore of one ray (origin o, direction d) against the triangle (v0, e1, e2) with its stored
; normal n = e1 x e2, by scalar triple products: s = o - v0, r = s x d,
;     det = -d.n,   u det = e2.r,   v det = -e1.r,   t det = s.n
; Outputs det, u, v and t (scaled by det, not divided); inputs o, d, v0, e1, e2, n (xyz each).
define void @tr_tri(float* %pdet, float* %pu, float* %pv, float* %pt,
                    float* %pox, float* %poy, float* %poz, float* %pdx, float* %pdy, float* %pdz,
                    float* %pv0x, float* %pv0y, float* %pv0z, float* %pe1x, float* %pe1y, float* %pe1z,
                    float* %pe2x, float* %pe2y, float* %pe2z, float* %pnx, float* %pny, float* %pnz) alwaysinline {
  %ox = load float, float* %pox
  %oy = load float, float* %poy
  %oz = load float, float* %poz
  %dx = load float, float* %pdx
  %dy = load float, float* %pdy
  %dz = load float, float* %pdz
  %v0x = load float, float* %pv0x
  %v0y = load float, float* %pv0y
  %v0z = load float, float* %pv0z
  %e1x = load float, float* %pe1x
  %e1y = load float, float* %pe1y
  %e1z = load float, float* %pe1z
  %e2x = load float, float* %pe2x
  %e2y = load float, float* %pe2y
  %e2z = load float, float* %pe2z
  %nx = load float, float* %pnx
  %ny = load float, float* %pny
  %nz = load float, float* %pnz
  ; det = -(dx nx + dy ny + dz nz)
  %dn.z = fmul float %dz, %nz
  %dn.yz = call float @llvm.fma.f32(float %dy, float %ny, float %dn.z)
  %dn = call float @llvm.fma.f32(float %dx, float %nx, float %dn.yz)
  %det = fneg float %dn
  ; s = o - v0
  %sx = fsub float %ox, %v0x
  %sy = fsub float %oy, %v0y
  %sz = fsub float %oz, %v0z
  ; r = s x d
  %sz.dy = fmul float %sz, %dy
  %neg.sz.dy = fneg float %sz.dy
  %rx = call float @llvm.fma.f32(float %sy, float %dz, float %neg.sz.dy)
  %sx.dz = fmul float %sx, %dz
  %neg.sx.dz = fneg float %sx.dz
  %ry = call float @llvm.fma.f32(float %sz, float %dx, float %neg.sx.dz)
  %sy.dx = fmul float %sy, %dx
  %neg.sy.dx = fneg float %sy.dx
  %rz = call float @llvm.fma.f32(float %sx, float %dy, float %neg.sy.dx)
  ; u det = e2 . r
  %ur.z = fmul float %e2z, %rz
  %ur.yz = call float @llvm.fma.f32(float %e2y, float %ry, float %ur.z)
  %u = call float @llvm.fma.f32(float %e2x, float %rx, float %ur.yz)
  ; v det = -(e1 . r)
  %vr.z = fmul float %e1z, %rz
  %vr.yz = call float @llvm.fma.f32(float %e1y, float %ry, float %vr.z)
  %vr = call float @llvm.fma.f32(float %e1x, float %rx, float %vr.yz)
  %v = fneg float %vr
  ; t det = s . n
  %sn.z = fmul float %sz, %nz
  %sn.yz = call float @llvm.fma.f32(float %sy, float %ny, float %sn.z)
  %t = call float @llvm.fma.f32(float %sx, float %nx, float %sn.yz)
  store float %det, float* %pdet
  store float %u, float* %pu
  store float %v, float* %pv
  store float %t, float* %pt
  ret void
}

declare float @llvm.fma.f32(float, float, float)
