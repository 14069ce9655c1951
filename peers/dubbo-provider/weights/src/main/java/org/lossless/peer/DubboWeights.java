package org.lossless.peer;

import java.io.BufferedReader;
import java.io.BufferedWriter;
import java.io.IOException;
import java.lang.reflect.Proxy;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.apache.dubbo.common.URL;
import org.apache.dubbo.rpc.Invocation;
import org.apache.dubbo.rpc.Invoker;
import org.apache.dubbo.rpc.cluster.loadbalance.RandomLoadBalance;

/**
 * Dubbo's own {@code AbstractLoadBalance.getWeight} (the released dubbo-cluster jar) for every
 * vector of a file: one line per vector, {@code weight TAB timestamp TAB warmup}, each field a
 * provider URL parameter's value or {@code \N} when the parameter is absent. {@code now-N} /
 * {@code now+N} inside a timestamp stands for the wall clock at the call minus / plus N ms; a call
 * is repeated until the clock did not move during it, so the "now" written out is the one Dubbo saw.
 *
 * <p>Writes one line per vector: {@code now TAB weight TAB malformed TAB weight-without-malformed}.
 * {@code weight} is what getWeight returned, or {@code NumberFormatException} when Dubbo's own
 * parsing threw (the call would fail); {@code malformed} lists the parameters whose value Dubbo's
 * {@code URL} cannot parse on its own (comma-separated, {@code -} for none), and the last field is
 * getWeight on the same URL without them (what lossless, which skips a malformed value, must give).
 *
 * <pre>java -cp 'dubbo-weights.jar:lib/*' org.lossless.peer.DubboWeights VECTORS OUT</pre>
 */
public final class DubboWeights extends RandomLoadBalance {
    private static final String ABSENT = "\\N";
    private static final Pattern NOW = Pattern.compile("now([-+])(\\d+)");
    private static final String[] KEYS = {"weight", "timestamp", "warmup"};

    private final Invocation invocation = (Invocation) Proxy.newProxyInstance(
            DubboWeights.class.getClassLoader(), new Class<?>[] {Invocation.class},
            (p, m, a) -> m.getName().equals("getMethodName") ? "greet" : null);

    static String resolve(String v, long now) {
        Matcher m = NOW.matcher(v);
        if (!m.find()) {
            return v;
        }
        long n = Long.parseLong(m.group(2));
        long t = m.group(1).equals("-") ? now - n : now + n;
        return v.substring(0, m.start()) + t + v.substring(m.end());
    }

    static URL url(String[] values, boolean[] skip) {
        URL url = new URL("tri", "127.0.0.1", 50051, "org.lossless.peer.Greeter");
        for (int i = 0; i < KEYS.length; i++) {
            if (values[i] != null && !skip[i]) {
                url = url.addParameter(KEYS[i], values[i]);
            }
        }
        return url;
    }

    String weight(URL url) {
        Invoker<?> invoker = (Invoker<?>) Proxy.newProxyInstance(
                DubboWeights.class.getClassLoader(), new Class<?>[] {Invoker.class},
                (p, m, a) -> m.getName().equals("getUrl") ? url : null);
        try {
            return Integer.toString(getWeight(invoker, invocation));
        } catch (NumberFormatException e) {
            return "NumberFormatException";
        }
    }

    /** Whether Dubbo's URL parses this one parameter as getWeight asks for it. */
    static boolean malformed(int key, String value) {
        URL url = new URL("tri", "127.0.0.1", 50051, "org.lossless.peer.Greeter").addParameter(KEYS[key], value);
        try {
            switch (key) {
                case 0:
                    url.getMethodParameter("greet", "weight", 100);
                    break;
                case 1:
                    url.getParameter("timestamp", 0L);
                    break;
                default:
                    url.getParameter("warmup", 600000);
                    break;
            }
            return false;
        } catch (NumberFormatException e) {
            return true;
        }
    }

    String row(String line) {
        String[] f = line.split("\t", -1);
        if (f.length != 3) {
            throw new IllegalArgumentException("not 3 fields: " + line);
        }
        while (true) {
            long now = System.currentTimeMillis();
            String[] values = new String[3];
            for (int i = 0; i < 3; i++) {
                values[i] = f[i].equals(ABSENT) ? null : resolve(f[i], now);
            }
            boolean[] skip = new boolean[3];
            String got = weight(url(values, skip));
            List<String> bad = new ArrayList<>();
            for (int i = 0; i < 3; i++) {
                if (values[i] != null && malformed(i, values[i])) {
                    skip[i] = true;
                    bad.add(KEYS[i]);
                }
            }
            String without = bad.isEmpty() ? got : weight(url(values, skip));
            if (System.currentTimeMillis() == now) {
                return now + "\t" + got + "\t" + (bad.isEmpty() ? "-" : String.join(",", bad)) + "\t" + without;
            }
        }
    }

    public static void main(String[] args) throws IOException {
        if (args.length != 2) {
            System.err.println("usage: DubboWeights VECTORS OUT");
            System.exit(2);
        }
        DubboWeights d = new DubboWeights();
        long n = 0;
        try (BufferedReader in = Files.newBufferedReader(Paths.get(args[0]), StandardCharsets.UTF_8);
                BufferedWriter out = Files.newBufferedWriter(Paths.get(args[1]), StandardCharsets.UTF_8)) {
            String line;
            while ((line = in.readLine()) != null) {
                out.write(d.row(line));
                out.newLine();
                n++;
            }
        }
        System.out.println("dubbo getWeight: " + n + " vectors");
    }
}
