package org.lossless.peer;

import com.alibaba.csp.sentinel.Constants;
import com.alibaba.csp.sentinel.Entry;
import com.alibaba.csp.sentinel.EntryType;
import com.alibaba.csp.sentinel.SphU;
import com.alibaba.csp.sentinel.slots.block.BlockException;
import com.alibaba.csp.sentinel.slots.block.RuleConstant;
import com.alibaba.csp.sentinel.slots.block.flow.FlowRule;
import com.alibaba.csp.sentinel.slots.block.flow.FlowRuleManager;
import com.alibaba.csp.sentinel.util.TimeUtil;
import java.io.BufferedWriter;
import java.io.IOException;
import java.lang.reflect.Field;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.List;
import java.util.stream.Stream;
import org.mockito.MockedStatic;
import org.mockito.Mockito;

/**
 * Alibaba Sentinel's own warm-up flow control (the released sentinel-core jar) over a file of
 * per-second request sequences, on a clock this peer moves: what Sentinel admits, second by
 * second, for the sequences lossless' admission cap is checked against (tests/sentinel_warmup.rs).
 *
 * <p>Input, one sequence per line ({@code #} starts a comment line):
 * {@code name TAB max_rps TAB cold_factor TAB warmup_s TAB placement TAB load}. {@code load} is a
 * comma-separated list of {@code N} (N requests in one second) or {@code NxS} (N requests in each
 * of S seconds). {@code placement} says where in its second request {@code i} of {@code n} arrives
 * (ms after the second's start): {@code even} at {@code i*1000/n}, {@code early} at
 * {@code i*500/n}, {@code late} at {@code 500 + i*500/n}, {@code start} all at 0,
 * {@code late-early} late in the sequence's even seconds (0, 2, ...) and early in its odd ones,
 * {@code random} at the {@code n} values {@code splitmix64((s << 32) | i) mod 1000} sorted
 * ({@code s} the second's index in the sequence).
 *
 * <p>Output: a {@code #} line naming the Sentinel version that ran (its
 * {@code Constants.SENTINEL_VERSION}), then one line per sequence, {@code name TAB seconds}: one
 * {@code A+B} per second of the load (comma-separated), A the requests admitted in the second's
 * first half (before 500 ms), B those admitted in its second half.
 *
 * <p>What runs is Sentinel's production path, unchanged: each sequence gets its own resource and one
 * {@link FlowRule} (grade {@code FLOW_GRADE_QPS}, {@code count} = max_rps, controlBehavior
 * {@code CONTROL_BEHAVIOR_WARM_UP}, {@code warmUpPeriodSec}, limitApp {@code default}, strategy
 * direct) loaded through {@link FlowRuleManager#loadRules}, which builds its
 * {@code WarmUpController(count, warmUpPeriodSec, ColdFactorProperty.coldFactor)}
 * ({@code FlowRuleUtil.generateRater}). Every request is {@link SphU#entry(String, EntryType)}
 * (inbound), exited at once when admitted, so it goes through the whole slot chain:
 * {@code StatisticSlot} counts an admitted request in the resource's {@code ClusterNode} (a
 * {@code StatisticNode}) after {@code FlowSlot} ({@code FlowRuleChecker.passLocalCheck}) has asked
 * {@code WarmUpController.canPass(node, 1, false)}. That check reads {@code node.passQps()}, the
 * rolling one-second window of two 500 ms buckets ({@code SampleCountProperty.SAMPLE_COUNT} = 2,
 * {@code IntervalProperty.INTERVAL} = 1000), and {@code node.previousPassQps()}, the previous
 * whole second of the 60 one-second buckets of the minute window, which {@code syncToken} takes
 * away from the stored tokens once per second after {@code coolDownTokens} refilled them. All of
 * these read the clock through {@code TimeUtil.currentTimeMillis()}, which this peer answers with
 * its own clock through Mockito's static mock of {@code TimeUtil}, as Sentinel's own tests do
 * ({@code AbstractTimeBasedTest}); the mock holds for this thread only, and every call above runs
 * on it.
 *
 * <p>Sentinel reads its cold factor once per process from {@code csp.sentinel.flow.cold.factor} into
 * {@code ColdFactorProperty.coldFactor}, which {@code generateRater} reads when rules are loaded; this
 * peer sets that field before loading each sequence's rule (as the property would for a process of
 * its own) and checks the controller built has it. The metric log timer
 * ({@code csp.sentinel.metric.flush.interval}) is off: it would read the nodes on the real clock
 * from another thread. Sentinel's own logs (its record log and EagleEye's) go to a temporary
 * folder, removed at the end.
 *
 * <pre>java -javaagent:lib/mockito-core-VERSION.jar -Xshare:off -cp 'sentinel-warmup.jar:lib/*' \
 *     org.lossless.peer.SentinelWarmUp SEQUENCES OUT</pre>
 */
public final class SentinelWarmUp {
    /** The first sequence's first second (ms since the epoch, a whole second). */
    static final long EPOCH = 1_700_000_000_000L;
    /** Each sequence starts this long after the previous one started (ms). */
    static final long SPACING = 1_000_000L;

    /** What {@code TimeUtil.currentTimeMillis()} answers on this thread. */
    private static volatile long now = EPOCH;

    record Sequence(String name, int maxRps, int coldFactor, int warmupS, String placement, int[] load) {}

    static int[] load(String spec) {
        List<Integer> out = new ArrayList<>();
        for (String part : spec.split(",")) {
            String[] nx = part.split("x", -1);
            if (nx.length > 2) {
                throw new IllegalArgumentException("bad load part: " + part);
            }
            int n = Integer.parseInt(nx[0]);
            int seconds = nx.length == 2 ? Integer.parseInt(nx[1]) : 1;
            if (n < 0 || seconds < 1) {
                throw new IllegalArgumentException("bad load part: " + part);
            }
            for (int s = 0; s < seconds; s++) {
                out.add(n);
            }
        }
        return out.stream().mapToInt(Integer::intValue).toArray();
    }

    static List<Sequence> read(Path file) throws IOException {
        List<Sequence> out = new ArrayList<>();
        for (String line : Files.readAllLines(file, StandardCharsets.UTF_8)) {
            if (line.isBlank() || line.startsWith("#")) {
                continue;
            }
            String[] f = line.split("\t", -1);
            if (f.length != 6) {
                throw new IllegalArgumentException("not 6 fields: " + line);
            }
            out.add(new Sequence(f[0], Integer.parseInt(f[1]), Integer.parseInt(f[2]), Integer.parseInt(f[3]), f[4],
                    load(f[5])));
        }
        return out;
    }

    /** Sebastiano Vigna's splitmix64 finalizer (a fixed, portable pseudo-random mix). */
    static long splitmix64(long x) {
        long z = x + 0x9E3779B97F4A7C15L;
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
        return z ^ (z >>> 31);
    }

    /** When each of the {@code n} requests of second {@code s} arrives, in ms after its start. */
    static long[] offsets(String placement, int s, int n) {
        long[] out = new long[n];
        for (int i = 0; i < n; i++) {
            switch (placement) {
                case "even" -> out[i] = (long) i * 1000 / n;
                case "early" -> out[i] = (long) i * 500 / n;
                case "late" -> out[i] = 500 + (long) i * 500 / n;
                case "start" -> out[i] = 0;
                case "late-early" -> out[i] = (s % 2 == 0 ? 500 : 0) + (long) i * 500 / n;
                case "random" -> out[i] = Long.remainderUnsigned(splitmix64(((long) s << 32) | i), 1000);
                default -> throw new IllegalArgumentException("unknown placement: " + placement);
            }
        }
        Arrays.sort(out);
        return out;
    }

    static Field field(String className, String name) throws ReflectiveOperationException {
        Field f = Class.forName(className).getDeclaredField(name);
        f.setAccessible(true);
        return f;
    }

    /** Loads the sequence's rule with the cold factor set as {@code csp.sentinel.flow.cold.factor} would. */
    static void loadRule(Sequence q, String resource) throws ReflectiveOperationException {
        field("com.alibaba.csp.sentinel.slots.block.flow.ColdFactorProperty", "coldFactor").setInt(null, q.coldFactor());
        FlowRule rule = new FlowRule(resource);
        rule.setGrade(RuleConstant.FLOW_GRADE_QPS);
        rule.setCount(q.maxRps());
        rule.setControlBehavior(RuleConstant.CONTROL_BEHAVIOR_WARM_UP);
        rule.setWarmUpPeriodSec(q.warmupS());
        FlowRuleManager.loadRules(List.of(rule));
        List<FlowRule> loaded = FlowRuleManager.getRules();
        if (loaded.size() != 1) {
            throw new IllegalStateException(q.name() + ": Sentinel refused the rule " + rule);
        }
        Object controller = field(FlowRule.class.getName(), "controller").get(loaded.get(0));
        String kind = controller.getClass().getSimpleName();
        int cold = field("com.alibaba.csp.sentinel.slots.block.flow.controller.WarmUpController", "coldFactor")
                .getInt(controller);
        if (!kind.equals("WarmUpController") || cold != q.coldFactor()) {
            throw new IllegalStateException(q.name() + ": Sentinel built " + kind + " with coldFactor " + cold);
        }
    }

    static int[] run(Sequence q, long start) throws ReflectiveOperationException {
        String resource = "warmup-" + q.name();
        loadRule(q, resource);
        // per second: admitted in the first half, in the second half
        int[] admitted = new int[2 * q.load().length];
        for (int s = 0; s < q.load().length; s++) {
            for (long at : offsets(q.placement(), s, q.load()[s])) {
                now = start + s * 1000L + at;
                Entry entry = null;
                try {
                    entry = SphU.entry(resource, EntryType.IN);
                    admitted[2 * s + (at < 500 ? 0 : 1)]++;
                } catch (BlockException e) {
                    // refused by the flow rule: not counted
                } finally {
                    if (entry != null) {
                        entry.exit();
                    }
                }
            }
        }
        return admitted;
    }

    static void removeTree(Path dir) throws IOException {
        try (Stream<Path> walk = Files.walk(dir)) {
            for (Path p : walk.sorted(Comparator.reverseOrder()).toList()) {
                Files.delete(p);
            }
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 2) {
            System.err.println("usage: SentinelWarmUp SEQUENCES OUT");
            System.exit(2);
        }
        List<Sequence> sequences = read(Paths.get(args[0]));
        Path logs = Files.createTempDirectory("sentinel-warmup-logs");
        // before any Sentinel class reads its configuration
        System.setProperty("csp.sentinel.log.dir", logs.toString());
        System.setProperty("JM.LOG.PATH", logs.toString());
        System.setProperty("EAGLEEYE.LOG.PATH", logs.resolve("eagleeye").toString());
        System.setProperty("csp.sentinel.metric.flush.interval", "0");
        long requests = 0;
        try (MockedStatic<TimeUtil> clock = Mockito.mockStatic(TimeUtil.class, Mockito.withSettings().stubOnly());
                BufferedWriter out = Files.newBufferedWriter(Paths.get(args[1]), StandardCharsets.UTF_8)) {
            clock.when(TimeUtil::currentTimeMillis).thenAnswer(inv -> now);
            out.write("# sentinel-core " + Constants.SENTINEL_VERSION
                    + ": admitted per second (first half + second half), per sequence");
            out.newLine();
            for (int k = 0; k < sequences.size(); k++) {
                Sequence q = sequences.get(k);
                if (q.load().length * 1000L >= SPACING) {
                    throw new IllegalArgumentException(q.name() + ": longer than " + SPACING / 1000 + " s");
                }
                int[] admitted = run(q, EPOCH + k * SPACING);
                StringBuilder line = new StringBuilder(q.name()).append('\t');
                for (int s = 0; s < q.load().length; s++) {
                    line.append(s == 0 ? "" : ",").append(admitted[2 * s]).append('+').append(admitted[2 * s + 1]);
                    requests += q.load()[s];
                }
                out.write(line.toString());
                out.newLine();
            }
        } finally {
            removeTree(logs);
        }
        System.out.println("sentinel warm-up: " + sequences.size() + " sequences, " + requests + " requests");
    }
}
