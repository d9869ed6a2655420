/* Deep recursion with work at every level, so checkpoints happen with thousands of frames
   on the stack. Usage: recurse DEPTH ROUNDS. */
#include <stdio.h>
#include <stdlib.h>

static volatile int sink;

static unsigned long long dive(int depth, unsigned long long acc) {
    unsigned long long local[4] = {acc, acc ^ (unsigned)depth, acc + 1, acc * 3};
    for (int i = 0; i < 200; i++) local[i & 3] = local[i & 3] * 6364136223846793005ULL + (unsigned)i;
    if (depth == 0) return local[0] ^ local[1] ^ local[2] ^ local[3];
    unsigned long long r = dive(depth - 1, local[depth & 3]);
    sink = depth;
    return r * 31 + local[(depth + 1) & 3];
}

int main(int argc, char **argv) {
    int depth = argc > 1 ? atoi(argv[1]) : 5000;
    int rounds = argc > 2 ? atoi(argv[2]) : 20;
    unsigned long long acc = 1;
    for (int r = 0; r < rounds; r++) {
        acc = dive(depth, acc);
        printf("round %d %llu\n", r, acc);
    }
    printf("recurse done %llu\n", acc);
    return 0;
}
