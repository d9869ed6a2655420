/* Benchmark kernels of `lazarus bench vm` (crates/cli/src/cmd/bench/vm.rs), compiled to
   WASI once and committed as vm_kernels.wasm (see the comment there for the command).
   Usage: kernels sieve|matmul|fib N [REPS]. No system call inside the kernels; the exit
   code is a checksum of the result (so nothing is optimised away, and the benchmark can
   compare the instrumented run with the plain one without printing). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned long long sieve(unsigned n, unsigned rounds) {
    unsigned char *composite = malloc(n + 1);
    unsigned long long total = 0;
    for (unsigned r = 0; r < rounds; r++) {
        memset(composite, 0, n + 1);
        unsigned count = 0;
        for (unsigned long long i = 2; i <= n; i++) {
            if (composite[i]) continue;
            count++;
            for (unsigned long long j = i * i; j <= n; j += i) composite[j] = 1;
        }
        total += count;
    }
    free(composite);
    return total;
}

static double matmul(unsigned n, unsigned reps) {
    double *a = malloc(sizeof(double) * n * n), *b = malloc(sizeof(double) * n * n),
           *c = malloc(sizeof(double) * n * n);
    for (unsigned i = 0; i < n * n; i++) {
        a[i] = (double)(i % 17) / 7.0;
        b[i] = (double)(i % 13) / 5.0;
    }
    double sum = 0;
    for (unsigned r = 0; r < reps; r++) {
        for (unsigned i = 0; i < n; i++)
            for (unsigned j = 0; j < n; j++) {
                double s = 0;
                for (unsigned k = 0; k < n; k++) s += a[i * n + k] * b[k * n + j];
                c[i * n + j] = s;
            }
        sum += c[(r * 7) % (n * n)];
        a[r % (n * n)] += c[0] * 1e-9;
    }
    free(a);
    free(b);
    free(c);
    return sum;
}

/* Call-heavy: recursion through a function pointer (call_indirect at every level). */
static unsigned long long (*volatile fib_ptr)(unsigned);
static unsigned long long fib(unsigned n) { return n < 2 ? n : fib_ptr(n - 1) + fib_ptr(n - 2); }

int main(int argc, char **argv) {
    const char *k = argc > 1 ? argv[1] : "sieve";
    unsigned n = argc > 2 ? (unsigned)strtoul(argv[2], 0, 10) : 1000000;
    unsigned reps = argc > 3 ? (unsigned)strtoul(argv[3], 0, 10) : 1;
    unsigned long long r;
    if (!strcmp(k, "sieve")) r = sieve(n, reps);
    else if (!strcmp(k, "matmul")) {
        double d = matmul(n, reps);
        memcpy(&r, &d, sizeof r);
        r ^= r >> 29;
    } else if (!strcmp(k, "fib")) {
        fib_ptr = fib;
        r = 0;
        for (unsigned i = 0; i < reps; i++) r += fib_ptr(n);
    } else {
        fprintf(stderr, "unknown kernel %s\n", k);
        return 126;
    }
    return (int)(r % 125);
}
