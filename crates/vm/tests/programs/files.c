/* Writes a file through a preopened directory while computing, rewrites its header at the
   end (a write that is not an append), keeps a second file open for appending, and prints.
   Usage: files LINES (run with --dir WORK::.). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned long long work(unsigned long long x, int k) {
    for (int i = 0; i < k; i++) x = x * 2862933555777941757ULL + 3037000493ULL;
    return x;
}

int main(int argc, char **argv) {
    int lines = argc > 1 ? atoi(argv[1]) : 2000;
    FILE *f = fopen("out.txt", "w");
    FILE *log = fopen("log.txt", "a");
    if (!f || !log) { perror("fopen"); return 1; }
    fprintf(f, "HEADER pending\n");
    unsigned long long x = 7;
    for (int i = 0; i < lines; i++) {
        x = work(x, 20000);
        fprintf(f, "line %d %llu\n", i, x);
        if (i % 100 == 0) {
            fflush(f);
            fprintf(log, "at %d\n", i);
            fflush(log);
            printf("progress %d\n", i);
            fflush(stdout);
            fprintf(stderr, "files: at %d\n", i);
        }
    }
    fseek(f, 0, SEEK_SET);
    fprintf(f, "HEADER done!!\n");
    fclose(f);
    fclose(log);
    FILE *r = fopen("out.txt", "r");
    char buf[256];
    unsigned long long sum = 0, n = 0;
    while (fgets(buf, sizeof buf, r)) { for (char *p = buf; *p; p++) sum = sum * 31 + (unsigned char)*p; n++; }
    fclose(r);
    printf("files done lines=%llu sum=%llu\n", n, sum);
    fprintf(stderr, "files: stderr line\n");
    return 0;
}
