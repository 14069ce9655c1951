package org.lossless.peer;

import org.apache.dubbo.config.ApplicationConfig;
import org.apache.dubbo.config.ProtocolConfig;
import org.apache.dubbo.config.RegistryConfig;
import org.apache.dubbo.config.ServiceConfig;
import org.apache.dubbo.config.bootstrap.DubboBootstrap;

/**
 * A Dubbo provider as users run one: a triple service registered into Nacos by Dubbo's own Nacos
 * registry, with a weight and a warmup, nothing else configured.
 *
 * <pre>java -cp 'dubbo-provider.jar:lib/*' org.lossless.peer.DubboProvider \
 *     NACOS_ADDR REGISTER_MODE APPLICATION PORT WEIGHT WARMUP_MS</pre>
 *
 * REGISTER_MODE is Dubbo's {@code dubbo.application.register-mode}: {@code interface} (one Nacos
 * service per interface, {@code providers:<interface>::}, the provider URL's parameters as
 * metadata) or {@code instance} (application-level: one Nacos service named after the
 * application). Prints "dubbo-provider ready" once exported and registered.
 */
public final class DubboProvider {
    public static void main(String[] args) throws Exception {
        if (args.length != 6) {
            System.err.println("usage: DubboProvider NACOS_ADDR REGISTER_MODE APPLICATION PORT WEIGHT WARMUP_MS");
            System.exit(2);
        }
        String nacos = args[0];
        String mode = args[1];
        String application = args[2];
        int port = Integer.parseInt(args[3]);
        int weight = Integer.parseInt(args[4]);
        int warmup = Integer.parseInt(args[5]);

        // loopback only. Dubbo refuses 127.x here (NetUtils.isInvalidLocalHost) and would bind and
        // register the machine's own address instead; IPv6's loopback it takes.
        System.setProperty("DUBBO_IP_TO_BIND", "::1");
        System.setProperty("DUBBO_IP_TO_REGISTRY", "::1");

        ApplicationConfig app = new ApplicationConfig(application);
        app.setRegisterMode(mode);
        app.setQosEnable(false);

        RegistryConfig registry = new RegistryConfig("nacos://" + nacos);
        registry.setUseAsConfigCenter(false);
        registry.setUseAsMetadataCenter(false);

        ProtocolConfig protocol = new ProtocolConfig("tri", port);

        ServiceConfig<Greeter> service = new ServiceConfig<>();
        service.setInterface(Greeter.class);
        service.setRef(new GreeterImpl(application + ":" + port));
        service.setWeight(weight);
        service.setWarmup(warmup);

        DubboBootstrap bootstrap = DubboBootstrap.getInstance()
                .application(app)
                .registry(registry)
                .protocol(protocol)
                .service(service)
                .start();
        System.out.println("dubbo-provider ready");
        System.out.flush();
        bootstrap.await();
    }
}
