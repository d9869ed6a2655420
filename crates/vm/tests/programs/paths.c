/* The code shapes the instrumentation treats specially (docs/VM.md, "Instrumentation"):
   the only long loops are leaf loops (no calls inside) in functions reached through a
   function pointer (call_indirect), leaving their loop early by break, return and a
   switch (br_table), plus deep recursion through a function pointer whose frames each
   run a leaf loop. Usage: paths N ROUNDS. Output depends on every iteration. */
#include <stdio.h>
#include <stdlib.h>

typedef unsigned long long u64;

/* A leaf loop left by `return` from its middle. */
static u64 scan(u64 seed, u64 n) {
    u64 s = seed | 1;
    for (u64 i = 0; i < n; i++) {
        s = s * 6364136223846793005ULL + (i ^ (s >> 29));
        if ((s & 0xfffff) == 0x12345) return s ^ i;
    }
    return s;
}

/* A leaf loop with a switch (br_table) and a `break`. */
static u64 mix(u64 seed, u64 n) {
    u64 s = seed, acc = 0;
    for (u64 i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        switch (s & 7) {
        case 0: acc += s; break;
        case 1: acc ^= s >> 3; break;
        case 2: acc = acc * 3 + i; break;
        case 3: acc -= i; break;
        case 5: acc += acc >> 11; break;
        default: acc ^= i * 0x9e3779b97f4a7c15ULL; break;
        }
        if (acc == 0xdeadbeefULL) break;
    }
    return acc ^ s;
}

/* Recursion through a function pointer; every frame runs a short leaf loop. */
static u64 (*volatile down_ptr)(int, u64);
static u64 down(int depth, u64 acc) {
    u64 v[3] = {acc, acc + (u64)depth, acc ^ 0x5555};
    for (int i = 0; i < 64; i++) v[i % 3] = v[i % 3] * 2862933555777941757ULL + (u64)i;
    if (depth == 0) return v[0] ^ v[1] ^ v[2];
    return down_ptr(depth - 1, v[depth % 3]) * 31 + v[(depth + 1) % 3];
}

static u64 (*volatile kernels[2])(u64, u64);

int main(int argc, char **argv) {
    u64 n = argc > 1 ? strtoull(argv[1], 0, 10) : 2000000;
    int rounds = argc > 2 ? atoi(argv[2]) : 6;
    kernels[0] = scan;
    kernels[1] = mix;
    down_ptr = down;
    u64 acc = 7;
    for (int r = 0; r < rounds; r++) {
        acc = kernels[r & 1](acc, n);
        acc ^= down_ptr(1500, acc);
        printf("round %d %llu\n", r, acc);
    }
    printf("paths done %llu\n", acc);
    return 0;
}
