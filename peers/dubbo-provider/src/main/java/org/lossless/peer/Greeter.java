package org.lossless.peer;

/** The one service of the provider: triple serves it over HTTP as POST /org.lossless.peer.Greeter/greet. */
public interface Greeter {
    String greet(String name);
}
