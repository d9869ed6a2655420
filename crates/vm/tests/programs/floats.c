/* Floating point heavy: an n-body-like integration plus NaNs made by arithmetic, printed
   with their sign (runtimes may give NaNs different bits unless canonicalised).
   Usage: floats STEPS. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define N 5
int main(int argc, char **argv) {
    int steps = argc > 1 ? atoi(argv[1]) : 200000;
    double x[N], y[N], vx[N], vy[N], m[N];
    for (int i = 0; i < N; i++) { x[i] = i; y[i] = i * 0.5; vx[i] = 0.01 * i; vy[i] = -0.02 * i; m[i] = 1.0 + i; }
    volatile double zero = 0.0;
    float fs = 0.0f;
    for (int s = 0; s < steps; s++) {
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) {
                if (i == j) continue;
                double dx = x[j] - x[i], dy = y[j] - y[i];
                double d = sqrt(dx * dx + dy * dy + 0.01);
                double f = m[j] / (d * d * d);
                vx[i] += dx * f * 1e-4; vy[i] += dy * f * 1e-4;
            }
        for (int i = 0; i < N; i++) { x[i] += vx[i] * 1e-3; y[i] += vy[i] * 1e-3; }
        fs += (float)sin(x[0]) * 1e-3f;
        if (s % (steps / 4 + 1) == 0) printf("step %d x0=%.17g y4=%.17g fs=%.9g\n", s, x[0], y[4], fs);
    }
    double nan1 = zero / zero, nan2 = sqrt(-1.0 - zero), nan3 = nan1 * 2.0;
    float nanf = (float)(zero / zero) + 1.0f;
    unsigned long long b1, b2, b3; unsigned int bf;
    __builtin_memcpy(&b1, &nan1, 8); __builtin_memcpy(&b2, &nan2, 8); __builtin_memcpy(&b3, &nan3, 8); __builtin_memcpy(&bf, &nanf, 4);
    printf("nans %f %f %f %f bits %llx %llx %llx %x\n", nan1, nan2, nan3, nanf, b1, b2, b3, bf);
    printf("floats done x0=%.17g fs=%.9g\n", x[0], fs);
    return 0;
}
