/*
 * Agent reports at federation scale: 100, then 1,000 sim agents (threads
 * in this process, each joined with its own token) report every second to
 * one real broker process. Over several windows: the broker's CPU share
 * (utime+stime from /proc/<pid>/stat over the window, as % of one core),
 * its RSS, and the round trip of a summary report (sent, sealed, stored in
 * etcd, acknowledged) as timed by probe agents, p50/p99. Prints human lines
 * and BENCH {json}. Not a test: nothing here fails on a slow figure.
 *
 * MERIDIAN_BENCH_SECONDS sets each window's length (default 5).
 */
#include "bench/fedfx.h"

#include <sodium.h>

#define WINDOWS 3
#define NPROBES 10

static double window_s = 5;

static void measure(int agents)
{
	pid_t pid = t_proc_pid(G.F.proc);
	double cpu[WINDOWS], *rtt = NULL;
	long rss = 0, hz = sysconf(_SC_CLK_TCK);
	unsigned long failed = 0;
	size_t nrtt = 0;
	int reporting = fed_wait_reporting(agents, 90000);

	printf("  %d agents: %d sites reporting\n", agents, reporting);
	t_sleep_ms(2000); /* settle after the joins */
	fed_reset_samples();
	for (int w = 0; w < WINDOWS; w++) {
		unsigned long long c0 = 0, c1 = 0;
		long long t0 = t_now_ms();
		fed_proc_cpu(pid, &c0);
		t_sleep_ms((int)(window_s * 1000));
		fed_proc_cpu(pid, &c1);
		double el = (double)(t_now_ms() - t0) / 1000.0;
		cpu[w] = 100.0 * (double)(c1 - c0) / (double)hz / el;
		long kb = fed_rss_kb(pid);
		if (kb > rss)
			rss = kb;
	}
	pthread_mutex_lock(&G.lock);
	nrtt = G.nrtt;
	failed = G.report_failed;
	rtt = malloc((nrtt ? nrtt : 1) * sizeof(*rtt));
	if (rtt)
		memcpy(rtt, G.rtt, nrtt * sizeof(*rtt));
	pthread_mutex_unlock(&G.lock);
	if (!rtt)
		return;
	double p50 = fed_pct(rtt, nrtt, 50) / 1000.0;
	double p99 = fed_pct(rtt, nrtt, 99) / 1000.0;
	double cpu_med = fed_median(cpu, WINDOWS);
	double cpu_min = cpu[0], cpu_max = cpu[WINDOWS - 1];
	printf("  %4d agents reporting every 1 s: broker CPU %.1f%% of one "
	       "core (median of %d x %.0f s windows, %.1f..%.1f), RSS %ld "
	       "KiB\n",
	       agents, cpu_med, WINDOWS, window_s, cpu_min, cpu_max, rss);
	printf("             report round trip p50 %.2f ms, p99 %.2f ms "
	       "(%zu reports from %d probe agents, %lu failed)\n",
	       p50, p99, nrtt, NPROBES, failed);
	printf("BENCH {\"bench\":\"fed_reports\",\"agents\":%d,"
	       "\"reporting\":%d,\"report_interval_s\":1,"
	       "\"broker_cpu_pct\":%.1f,\"broker_cpu_pct_min\":%.1f,"
	       "\"broker_cpu_pct_max\":%.1f,\"broker_rss_kb\":%ld,"
	       "\"report_p50_ms\":%.3f,\"report_p99_ms\":%.3f,"
	       "\"samples\":%zu,\"failed\":%lu,\"windows\":%d,"
	       "\"window_s\":%.1f}\n",
	       agents, reporting, cpu_med, cpu_min, cpu_max, rss, p50, p99,
	       nrtt, failed, WINDOWS, window_s);
	free(rtt);
}

int main(void)
{
	const char *s = getenv("MERIDIAN_BENCH_SECONDS");
	int levels[] = {100, 1000};
	int rv = 0;

	if (s && strtod(s, NULL) > 0)
		window_s = strtod(s, NULL);
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (sodium_init() < 0)
		return 1;
	curl_global_init(CURL_GLOBAL_DEFAULT);
	mer_log_set_level(MER_LOG_ERROR);
	setenv("BFX_LOG", "warn", 0);
	printf("fed_bench: sim agents in-process, each joined with its own "
	       "token, reporting every 1 s to one broker process\n");
	if (fed_start("") != 0) {
		fprintf(stderr, "fed_bench: broker did not start\n");
		rv = 1;
		goto out;
	}
	for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++) {
		int running = fed_grow(levels[i], NPROBES);
		if (running < levels[i] * 9 / 10) {
			fprintf(stderr, "fed_bench: only %d agents run\n",
				running);
			rv = 1;
			goto out;
		}
		measure(levels[i]);
	}
out:
	fed_stop();
	curl_global_cleanup();
	return rv;
}
