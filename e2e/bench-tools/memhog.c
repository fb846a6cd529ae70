/*
 * memhog: holds N MiB of incompressible anonymous memory, prints "ready",
 * then sleeps. `memhog N compressible` fills it with each page's number
 * instead (every page touched, different, and compressing to almost nothing).
 * The process the checkpoint benchmarks dump, both as a plain host process
 * (raw criu) and inside a container (through lazarus).
 *
 * `memhog N MODE PERCENT RUN_KIB` (defaults 5 and 1024): on SIGUSR1 it
 * rewrites PERCENT % of its pages with new incompressible data, in runs of
 * RUN_KIB KiB at pseudo-random, page-aligned, non-overlapping positions,
 * then prints "dirtied <n> pages". The positions come from a fixed seed: the
 * same arguments dirty the same pages on every run (a second SIGUSR1 dirties
 * the next draw of the same sequence). What the incremental checkpoint
 * benchmark changes between two checkpoints.
 *
 * Build: gcc -O2 -static -o memhog memhog.c
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static volatile sig_atomic_t dirty_requested;

static void on_usr1(int sig)
{
	(void)sig;
	dirty_requested = 1;
}

/* xorshift64: incompressible, never 0 from a non-zero state. */
static uint64_t next(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

/*
 * Rewrites `runs` runs of `run` pages each out of `pages`: picks `runs`
 * distinct sorted values out of the pages - runs * run + 1 possible starts
 * (selection sampling, Knuth's algorithm S) and moves the i-th one up by
 * i * run pages, so the runs never overlap. Returns the pages rewritten.
 */
static size_t dirty(uint64_t *memory, size_t pages, size_t page_words, size_t run, size_t runs,
		    uint64_t *positions, uint64_t *data)
{
	size_t starts = pages - runs * run + 1;
	size_t chosen = 0;

	for (size_t s = 0; s < starts && chosen < runs; s++) {
		if (next(positions) % (starts - s) >= runs - chosen)
			continue;
		uint64_t *from = memory + (s + chosen * run) * page_words;
		for (size_t w = 0; w < run * page_words; w++)
			from[w] = next(data);
		chosen++;
	}
	return chosen * run;
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 256;
	int compressible = argc > 2 && argv[2][0] == 'c';
	double percent = argc > 3 ? strtod(argv[3], NULL) : 5.0;
	size_t run_kib = argc > 4 ? strtoul(argv[4], NULL, 10) : 1024;
	size_t words = (mib << 20) / sizeof(uint64_t);
	size_t page_words = (size_t)sysconf(_SC_PAGESIZE) / sizeof(uint64_t);
	size_t pages = words / page_words;
	size_t run = run_kib * 1024 / (page_words * sizeof(uint64_t));
	/* Page-aligned, so a run of pages is exactly that many pages. */
	uint64_t *memory = mmap(NULL, words * sizeof(uint64_t), PROT_READ | PROT_WRITE,
				MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t x = 0x9E3779B97F4A7C15ull;
	uint64_t positions = 0x2545F4914F6CDD1Dull;
	struct sigaction action;
	size_t runs;

	if (memory == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	if (run < 1)
		run = 1;
	if (run > pages)
		run = pages ? pages : 1;
	runs = (size_t)(pages * percent / 100.0 / run + 0.5);
	if (runs > pages / run)
		runs = pages / run;

	memset(&action, 0, sizeof(action));
	action.sa_handler = on_usr1;
	sigemptyset(&action.sa_mask);
	if (sigaction(SIGUSR1, &action, NULL) != 0) {
		perror("sigaction");
		return 1;
	}

	if (compressible) {
		for (size_t i = 0; i < words; i++)
			memory[i] = i / 512;
		printf("ready %zu MiB compressible\n", mib);
	} else {
		/* Every page touched. */
		for (size_t i = 0; i < words; i++)
			memory[i] = next(&x);
		printf("ready %zu MiB\n", mib);
	}
	fflush(stdout);
	for (;;) {
		pause();
		if (!dirty_requested)
			continue;
		dirty_requested = 0;
		printf("dirtied %zu pages\n", dirty(memory, pages, page_words, run, runs, &positions, &x));
		fflush(stdout);
	}
}
