package lossless.peers.nacos;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.Executors;

import com.alibaba.nacos.api.naming.NamingFactory;
import com.alibaba.nacos.api.naming.NamingService;
import com.alibaba.nacos.api.naming.pojo.Instance;
import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;

/**
 * A light provider that registers itself in Nacos through the real nacos-client (an ephemeral
 * instance, the Spring Cloud Alibaba default, kept alive by the client's gRPC connection), with
 * Dubbo's warm-up keys in its metadata ({@code timestamp}: its start, ms since the epoch;
 * {@code warmup}: ms). It answers every request with 200, {@code x-instance: ip:port} and a body
 * that says what it received (method, path, headers, body length), so a test can compare what
 * reached it with what was sent.
 *
 * <p>System properties: {@code ip}, {@code port}, {@code service}, {@code server.addr}
 * ({@code host:port} of the registry's HTTP port; gRPC is that port + 1000), {@code warmup.ms}
 * (default 600000), {@code weight} (optional), {@code grace.ms} (default 0). On SIGTERM it
 * deregisters, keeps serving for {@code grace.ms}, then exits (a polite shutdown); SIGKILL is an
 * abrupt one. It prints {@code registered ip:port} once the registration was accepted.
 */
public final class Provider {
    private Provider() {
    }

    public static void main(String[] args) throws Exception {
        String ip = System.getProperty("ip", "127.0.0.1");
        int port = Integer.parseInt(System.getProperty("port"));
        String service = System.getProperty("service", "demo-svc");
        String serverAddr = System.getProperty("server.addr", "127.0.0.1:8848");
        long warmupMs = Long.parseLong(System.getProperty("warmup.ms", "600000"));
        long graceMs = Long.parseLong(System.getProperty("grace.ms", "0"));
        String self = ip + ":" + port;

        HttpServer server = HttpServer.create(new InetSocketAddress(ip, port), 256);
        server.setExecutor(Executors.newFixedThreadPool(16));
        server.createContext("/", ex -> answer(ex, self));
        server.start();

        Properties props = new Properties();
        props.setProperty("serverAddr", serverAddr);
        NamingService naming = NamingFactory.createNamingService(props);
        Instance inst = new Instance();
        inst.setIp(ip);
        inst.setPort(port);
        inst.setEphemeral(true);
        Map<String, String> md = new HashMap<>();
        md.put("timestamp", Long.toString(System.currentTimeMillis()));
        md.put("warmup", Long.toString(warmupMs));
        String weight = System.getProperty("weight");
        if (weight != null) {
            md.put("weight", weight);
        }
        inst.setMetadata(md);
        naming.registerInstance(service, inst);
        System.out.println("registered " + self);
        System.out.flush();

        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                naming.deregisterInstance(service, inst);
                System.out.println("deregistered " + self);
                System.out.flush();
                Thread.sleep(graceMs);
                naming.shutDown();
            } catch (Exception e) {
                System.out.println("shutdown: " + e);
            }
            server.stop(0);
        }));
        Thread.currentThread().join();
    }

    private static void answer(HttpExchange ex, String self) throws IOException {
        long bodyLen;
        try (InputStream in = ex.getRequestBody()) {
            bodyLen = in.transferTo(OutputStream.nullOutputStream());
        }
        StringBuilder b = new StringBuilder();
        b.append("{\"instance\":").append(quote(self));
        b.append(",\"method\":").append(quote(ex.getRequestMethod()));
        b.append(",\"path\":").append(quote(ex.getRequestURI().toString()));
        b.append(",\"body_len\":").append(bodyLen);
        b.append(",\"headers\":{");
        boolean first = true;
        for (Map.Entry<String, List<String>> h : ex.getRequestHeaders().entrySet()) {
            if (!first) {
                b.append(',');
            }
            first = false;
            b.append(quote(h.getKey().toLowerCase())).append(':').append(quote(String.join(",", h.getValue())));
        }
        b.append("}}");
        byte[] out = b.toString().getBytes(StandardCharsets.UTF_8);
        ex.getResponseHeaders().set("x-instance", self);
        ex.getResponseHeaders().set("content-type", "application/json");
        ex.sendResponseHeaders(200, out.length);
        try (OutputStream os = ex.getResponseBody()) {
            os.write(out);
        }
    }

    private static String quote(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') {
                b.append('\\').append(c);
            } else if (c < 0x20) {
                b.append(String.format("\\u%04x", (int) c));
            } else {
                b.append(c);
            }
        }
        return b.append('"').toString();
    }
}
