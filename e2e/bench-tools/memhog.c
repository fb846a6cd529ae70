/*
 * memhog: holds N MiB of incompressible anonymous memory, prints "ready",
 * then sleeps. `memhog N compressible` fills it with each page's number
 * instead (every page touched, different, and compressing to almost nothing). The process the checkpoint benchmark dumps, both as a plain
 * host process (raw criu) and inside a container (through lazarus).
 * Build: gcc -O2 -static -o memhog memhog.c
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 256;
	size_t words = (mib << 20) / sizeof(uint64_t);
	uint64_t *memory = malloc(words * sizeof(uint64_t));
	uint64_t x = 0x9E3779B97F4A7C15ull;

	if (!memory) {
		perror("malloc");
		return 1;
	}
	if (argc > 2 && argv[2][0] == 'c') {
		for (size_t i = 0; i < words; i++)
			memory[i] = i / 512;
		printf("ready %zu MiB compressible\n", mib);
		fflush(stdout);
		for (;;)
			pause();
	}
	/* xorshift64: incompressible, and every page is touched. */
	for (size_t i = 0; i < words; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		memory[i] = x;
	}
	printf("ready %zu MiB\n", mib);
	fflush(stdout);
	for (;;)
		pause();
}
