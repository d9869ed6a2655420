/* A compute loop with no system call inside: checkpoints must happen in the middle of it.
   Usage: loop N. Prints a few progress lines and a checksum; draws from random_get at
   start and end (deterministic with --seed, continued across a resume). */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    unsigned long long n = argc > 1 ? strtoull(argv[1], 0, 10) : 50000000ULL;
    unsigned long long r0 = 0, r1 = 0;
    getentropy(&r0, sizeof r0);
    unsigned long long s = r0 | 1;
    for (unsigned long long i = 0; i < n; i++) {
        s = s * 6364136223846793005ULL + (i ^ (s >> 29));
        if (i % (n / 8 + 1) == 0) printf("loop i=%llu s=%llu\n", i, s);
    }
    getentropy(&r1, sizeof r1);
    printf("done s=%llu r1=%llu\n", s, r1);
    return 0;
}
